"""Records -> one row per setup -> markdown: comparable to the paper, not comparable, paired.

A cell is one setup: the runs of one resolved config that differ only in their seed (the
record's ``setup_id``), averaged over distinct seeds. Setups of one (backbone, method, dataset,
variant) that differ in anything else are separate rows, labelled by what differs. A seed run
twice is counted once and named in the notes.

Whether a setup is comparable to the paper is computed from its records (``why_not_comparable``):
the official split counts, a pre-trained checkpoint that loaded without skipped keys, and the
official recipe's epochs, batch size and points. Other setups go to their own section, with the
reasons, never beside a paper number.

Two selections side by side, each labelled: honest = test accuracy at the best validation epoch
where a validation split was carved from train, else the last epoch; legacy = best epoch on the
test set, or for voting runs the best of the vote repeats: what every official repository reports.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from harness.catalog import DATASETS
from harness.results import stats
from models.backbones import NPOINTS
from models.peft import registry

DATASET_TITLES = {name: info.title for name, info in DATASETS.items()}   # the catalog's, in its order
BACKBONE_TITLES = {"point_bert": "Point-BERT", "point_mae": "Point-MAE", "point_m2ae": "Point-M2AE"}
# display names from the method registry (models.peft), in its table order (read without torch)
METHOD_TITLES = registry.titles()
VARIANT_TITLES = {"": "-", "aug": "aug"}
GROUP = ["dataset", "backbone", "method", "variant", "data_source"]
RECIPE = Path(__file__).resolve().parents[2] / "experiments" / "recipes" / "official.yaml"
LABEL_SKIP = {"train.seed", "experiment", "variant", "output.runs_dir", "data.root", "data.num_workers",
              "output.tensorboard", "output.progress", "model.allow_random_init"}


# ------------------------------------------------------------------ comparability

@functools.lru_cache(maxsize=1)
def official_recipe() -> dict:
    """(epochs, batch size) of experiments/recipes/official.yaml."""
    from harness.config import load_yaml

    raw = load_yaml(RECIPE)
    return {"epochs": raw["schedule"]["epochs"], "batch_size": raw["train"]["batch_size"]}


@functools.lru_cache(maxsize=None)
def _official(dataset: str) -> tuple[dict | None, str | None, int | None]:
    """(official split counts, model family, classes) of a dataset the project knows."""
    info = DATASETS.get(dataset)   # an unknown dataset name: nothing to compare with
    return (dict(info.official_counts), info.family, info.num_classes) if info else (None, None, None)


def why_not_comparable(r: dict) -> list[str]:
    """The reasons a done record is not comparable to the paper ([] when it is)."""
    reasons = []
    cfg = r.get("config") if isinstance(r.get("config"), dict) else {}
    data = r.get("data") if isinstance(r.get("data"), dict) else None
    if r["data_source"] == "synthetic":
        reasons.append("synthetic data")
    if (cfg.get("model") or {}).get("pretrained") is None and r.get("pretrained") is None:
        reasons.append("random init (no pre-trained checkpoint)")
    elif isinstance(r.get("pretrained"), dict) and r["pretrained"].get("skipped"):
        reasons.append(f"checkpoint: {r['pretrained']['skipped']} keys not loaded (shape mismatch)")
    counts, family, _ = _official(r["dataset"])
    if data is None:
        reasons.append("record has no data counts (older schema)")
    elif counts:
        short = []
        for split, want in counts.items():
            got = (data.get(split) or 0) + ((data.get("val") or 0) if split == "train" else 0)
            if got != want:
                short.append(f"{got:,} of {want:,} {split}")
        if short:
            reasons.append(f"partial data: {', '.join(short)} samples")
    recipe = official_recipe()
    epochs = r.get("epochs")
    if isinstance(epochs, int) and epochs != recipe["epochs"]:
        reasons.append(f"{epochs} of {recipe['epochs']} epochs")
    train = cfg.get("train") or {}
    if train.get("max_steps_per_epoch") is not None:
        reasons.append(f"at most {train['max_steps_per_epoch']} steps per epoch")
    if train.get("batch_size") not in (None, recipe["batch_size"]):
        reasons.append(f"batch {train['batch_size']} (recipe {recipe['batch_size']})")
    npoints = (cfg.get("data") or {}).get("npoints")
    want = NPOINTS.get(r["backbone"], {}).get(family)
    if want is not None and npoints is not None:
        if npoints != want:
            reasons.append(f"{npoints} points (recipe {want})")
    return reasons


def baselines(r: dict) -> tuple[float | None, float | None]:
    """(chance, majority-class accuracy) in % of the test split the run was tested on."""
    data = r.get("data") if isinstance(r.get("data"), dict) else {}
    counts = (data.get("class_counts") or {}).get("test") if isinstance(data.get("class_counts"), dict) else None
    chance, majority = stats.class_baselines(counts)
    if chance is None:
        n = _official(r["dataset"])[2]
        chance = 100.0 / n if n else None
    return chance, majority


# ------------------------------------------------------------------ collect

def _setup_id(r: dict) -> str:
    """The record's setup id; older records: a hash of their config without the seed."""
    if r.get("setup_id"):
        return r["setup_id"]
    cfg = r.get("config")
    if isinstance(cfg, dict) and cfg:
        tree = json.loads(json.dumps(cfg))
        tree.get("train", {}).pop("seed", None)
        for key in LABEL_SKIP:
            *parents, last = key.split(".")
            node = tree
            for p in parents:
                node = node.get(p, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node.pop(last, None)
        import hashlib
        return "cfg-" + hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]
    return f"run-{r['run_id']}"


COLUMNS = ["run_id", "setup_id", *GROUP, "seed", "honest", "honest_kind", "legacy", "legacy_kind",
           "acc_last", "acc_best_test", "acc_best_val", "acc_vote", "trainable", "compute_time_s",
           "seconds_per_epoch", "peak_memory_bytes", "gpu_hours", "chance", "majority", "reasons", "end_time"]
NUMERIC = ("honest", "legacy", "acc_last", "acc_best_test", "acc_best_val", "acc_vote", "trainable",
           "compute_time_s", "seconds_per_epoch", "peak_memory_bytes", "gpu_hours", "chance", "majority")


def _numeric(col: list) -> pd.Series:
    """``pd.to_numeric(pd.Series(col), errors="coerce")``, built directly for the common columns
    (floats and nulls: float64 with NaN; plain ints that fit: int64), which gives the same
    values and dtype several times faster; anything else takes the general path."""
    kinds = set(map(type, col))
    if col and kinds <= {float, type(None)}:
        return pd.Series(np.array(col, dtype=np.float64))
    if kinds == {int}:
        with contextlib.suppress(OverflowError):
            return pd.Series(np.array(col, dtype=np.int64))
    return pd.to_numeric(pd.Series(col), errors="coerce")


def record_row(r: dict) -> tuple | None:
    """The fields a done record gives its row of the runs table, read in one pass (the record,
    its setup id, then the columns ``collect`` takes as they are); None for a failed record."""
    if r["status"] != "done":
        return None
    m = r["metrics"]
    return (r, _setup_id(r), r["run_id"], r["dataset"], r["backbone"], r["method"],
            r["variant"] or "", r["data_source"], r["seed"], m.get("acc_last"), m.get("acc_best_test"),
            m.get("acc_best_val"), m.get("acc_vote"), (r.get("params") or {}).get("trainable"),
            r.get("compute_time_s", r.get("wall_time_s")), r.get("seconds_per_epoch"),
            r.get("peak_memory_bytes"), r.get("gpu_hours"), r.get("end_time") or "")


def collect(records: list[dict], rows: list | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """(one row per done record, setup id -> config of one of its records). ``rows``:
    ``record_row`` of each record, when already computed (``records.load_records_and_rows``
    computes them while reading, which is cheaper than a later pass over the records)."""
    if rows is None:
        rows = [record_row(r) for r in records]
    rows = [t for t in rows if t is not None]
    (done, sids, run_id, dataset, backbone, method, variant, source, seed, last, best_test, best_val, vote,
     trainable, compute_s, s_per_epoch, peak, gpu_hours, end_time) = (
        (list(c) for c in zip(*rows)) if rows else [[] for _ in range(19)])
    # one object per distinct name (rows from the row cache carry a copy each): pandas hashes
    # and compares the same object faster (factorize, groupby: 0.2-0.4 s less for 100,000 rows)
    one = {}.setdefault
    sids, dataset, backbone, method, variant, source = (
        [one(v, v) for v in col] for col in (sids, dataset, backbone, method, variant, source))
    per_setup, configs = {}, {}
    for sid, r in zip(sids, done):
        if sid not in per_setup:   # one setup = one config, data and weights: computed once
            if type(r) is not dict:   # a row from the row cache: its record, parsed now
                r = r.load()
            per_setup[sid] = ("; ".join(why_not_comparable(r)), *baselines(r))
            configs[sid] = r.get("config") if isinstance(r.get("config"), dict) else {}
    setup_cells = [per_setup[sid] for sid in sids]
    cols = {
        "run_id": run_id, "setup_id": sids, "dataset": dataset, "backbone": backbone, "method": method,
        "variant": variant, "data_source": source, "seed": seed,
        # honest: best val where a validation split was carved, else last; legacy: vote, else best test
        "honest": [v if v is not None else x for v, x in zip(best_val, last)],
        "honest_kind": ["best val" if v is not None else "last" for v in best_val],
        "legacy": [v if v is not None else x for v, x in zip(vote, best_test)],
        "legacy_kind": ["vote" if v is not None else "best test" for v in vote],
        "acc_last": last, "acc_best_test": best_test, "acc_best_val": best_val, "acc_vote": vote,
        "trainable": trainable, "compute_time_s": compute_s, "seconds_per_epoch": s_per_epoch,
        "peak_memory_bytes": peak, "gpu_hours": gpu_hours, "chance": [c[1] for c in setup_cells],
        "majority": [c[2] for c in setup_cells], "reasons": [c[0] for c in setup_cells], "end_time": end_time,
    }
    df = pd.DataFrame({name: _numeric(cols[name]) if name in NUMERIC else cols[name] for name in COLUMNS},
                      columns=COLUMNS)
    return df, configs


def _flatten(tree, prefix="") -> dict:
    out = {}
    for k, v in (tree or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v
    return out


def setup_labels(setups: pd.DataFrame, configs: dict[str, dict]) -> dict[str, str]:
    """Per setup: what differs from the other setups of its (dataset, backbone, method, variant,
    data source), as 'key=value, ...' ('' when it is the only one)."""
    labels = {}
    for _, group in setups.groupby(GROUP, sort=False):
        ids = list(group.setup_id)
        if len(ids) == 1:
            labels[ids[0]] = ""
            continue
        flat = {sid: _flatten(configs.get(sid)) for sid in ids}
        keys = sorted({k for f in flat.values() for k in f} - LABEL_SKIP)
        differ = [k for k in keys if len({repr(flat[s].get(k)) for s in ids}) > 1]
        for sid in ids:
            parts = [f"{k.split('.', 1)[-1] if k.startswith(('data.', 'train.')) else k}={flat[sid].get(k)}"
                     for k in differ[:3]]
            more = f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""
            labels[sid] = (", ".join(parts) + more) if parts else f"setup {sid[:8]}"
    return labels


def _sorted_repeats(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """``df`` sorted by (setup id, seed, end time), stably, and which rows repeat an earlier
    row's (setup id, seed): what ``sort_values`` and ``duplicated`` give, computed from integer
    codes of the text columns (each factorised once, in sorted order) for the usual column
    types, as pandas itself sorts by several keys."""
    sid, end = df["setup_id"], df["end_time"]
    if isinstance(sid.dtype, pd.StringDtype) and isinstance(end.dtype, pd.StringDtype) and df["seed"].dtype == np.int64:
        sid_codes, end_codes = pd.factorize(sid, sort=True)[0], pd.factorize(end, sort=True)[0]
        if (sid_codes >= 0).all() and (end_codes >= 0).all():   # no missing values (they would sort last)
            seed = df["seed"].to_numpy()
            order = np.lexsort((end_codes, seed, sid_codes))   # stable; the last key sorts first
            sid_codes, seed = sid_codes[order], seed[order]
            repeat = np.zeros(len(order), dtype=bool)
            repeat[1:] = (sid_codes[1:] == sid_codes[:-1]) & (seed[1:] == seed[:-1])
            df = df.take(order)
            return df, pd.Series(repeat, index=df.index)
    df = df.sort_values(["setup_id", "seed", "end_time"], kind="stable")
    return df, df.duplicated(["setup_id", "seed"], keep="first")


def summarize(df: pd.DataFrame, configs: dict[str, dict], failed: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    """One row per setup: n distinct seeds, honest / legacy mean ± std, costs; and the notes
    (duplicate seeds)."""
    notes = []
    df, dup = _sorted_repeats(df)
    if dup.any():
        for (sid, seed), g in df[df.duplicated(["setup_id", "seed"], keep=False)].groupby(["setup_id", "seed"]):
            notes.append(f"error: setup {sid[:8]} has {len(g)} runs of seed {seed} ({', '.join(g.run_id)}); "
                         f"counted once ({g.run_id.iloc[0]})")
    uniq = df[~dup]
    agg = uniq.groupby("setup_id", sort=False).agg(
        **{c: (c, "first") for c in GROUP}, n=("seed", "nunique"), seeds=("seed", lambda s: ",".join(map(str, sorted(s)))),
        honest_mean=("honest", "mean"), honest_std=("honest", "std"), honest_n=("honest", "count"),
        honest_kind=("honest_kind", "first"),
        legacy_mean=("legacy", "mean"), legacy_std=("legacy", "std"), legacy_n=("legacy", "count"),
        legacy_kind=("legacy_kind", "first"),
        trainable_M=("trainable", "mean"), compute_h=("compute_time_s", "sum"), gpu_hours=("gpu_hours", "sum"),
        seconds_per_epoch=("seconds_per_epoch", "mean"), peak_memory_GB=("peak_memory_bytes", "max"),
        chance=("chance", "first"), majority=("majority", "first"), reasons=("reasons", "first"),
    ).reset_index()
    agg["trainable_M"] /= 1e6
    agg["compute_h"] /= 3600
    agg["peak_memory_GB"] /= 1e9
    agg["comparable"] = agg.reasons == ""
    fail_counts: dict[str, int] = {}
    for r in failed:
        key = r.get("setup_id") or ""
        fail_counts[key] = fail_counts.get(key, 0) + 1
    agg["n_failed"] = agg.setup_id.map(lambda s: fail_counts.get(s, 0)).astype(int)
    agg["label"] = agg.setup_id.map(setup_labels(agg, configs)) if len(agg) else []
    return agg.sort_values(GROUP + ["label"], key=_order_key, kind="stable").reset_index(drop=True), notes


def _order_key(col: pd.Series) -> pd.Series:
    known = {"backbone": list(BACKBONE_TITLES), "method": list(METHOD_TITLES),
             "dataset": list(DATASET_TITLES), "variant": ["", "aug"], "data_source": ["official", "synthetic"]}
    order = known.get(col.name)
    if not order:
        return col
    return col.map(lambda v: f"{order.index(v):03d}" if v in order else f"999{v}")


# ------------------------------------------------------------------ paired statistics

def paired(df: pd.DataFrame, setups: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, backbone, variant, data source, comparable) and each PEFT x full setup
    pair: per-seed differences (PEFT - full), their mean and 95% t interval, for both selections."""
    rows = []
    if setups.empty:
        return pd.DataFrame(rows)
    comparable = dict(zip(setups.setup_id, setups.comparable))
    labels = dict(zip(setups.setup_id, setups.label))
    # only the four columns needed: each group's rows are taken from them alone
    uniq = df[["setup_id", "seed", "honest", "legacy"]].drop_duplicates(["setup_id", "seed"])
    by_setup = {sid: {sel: dict(zip(g.seed.tolist(), g[sel].tolist())) for sel in ("honest", "legacy")}
                for sid, g in uniq.groupby("setup_id", sort=False)}
    keys = ["dataset", "backbone", "variant", "data_source"]
    # the setups grouped by keys as groupby(keys, sort=False) would (first-seen order, rows with a
    # missing key left out), in plain Python: a few dozen rows, where each pandas step costs more
    groups: dict[tuple, list[tuple[str, str]]] = {}
    for *key, method, sid in zip(*(setups[k].tolist() for k in keys), setups.method.tolist(),
                                 setups.setup_id.tolist()):
        if not any(pd.isna(k) for k in key):
            groups.setdefault(tuple(key), []).append((method, sid))
    for key, members in groups.items():
        fulls = [sid for method, sid in members if method == "full"]
        for method, peft in members:
            if method == "full":
                continue
            for f in fulls:
                if comparable[peft] != comparable[f]:
                    continue
                a, b = by_setup[peft], by_setup[f]
                seeds = sorted(set(a["honest"]) & set(b["honest"]))
                if not seeds:
                    continue
                row = dict(zip(keys, key), method=method, peft_setup=peft, full_setup=f,
                           label=" / ".join(x for x in (labels[peft], labels[f]) if x),
                           comparable=comparable[f], seeds=",".join(map(str, seeds)), n=len(seeds))
                for sel in ("honest", "legacy"):
                    diffs = [d for d in (float(a[sel][s] - b[sel][s]) for s in seeds) if not math.isnan(d)]
                    if diffs:
                        mean, low, high = stats.paired_interval(diffs)
                        row.update({f"{sel}_mean": mean, f"{sel}_low": low, f"{sel}_high": high,
                                    f"{sel}_verdict": stats.verdict(low, high)})
                rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ markdown

def _f(v, fmt="{:.2f}") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def acc_cell(mean, std, n, kind: str = "") -> str:
    """'mean ± std (n=k)'; no std for n=1; 'no value' when no run has this accuracy."""
    if not n:
        return "no value"
    tag = f", {kind}" if kind and kind not in ("last", "best test") else ""
    if n == 1:
        return f"{mean:.2f} (n=1{tag})"
    return f"{mean:.2f} ± {std:.2f} (n={n}{tag})"


def _cost(r) -> list[str]:
    return [_f(r.trainable_M), _f(r.compute_h, "{:.3f}"), _f(r.seconds_per_epoch, "{:.1f}"), _f(r.peak_memory_GB)]


COST_HEADERS = ["trainable (M)", "compute (h)", "s/epoch", "peak mem. (GB)"]


def _paper_cells(ref_rows: list, notes: list[str]) -> tuple[str, str]:
    """(accuracy, trainable parameters) cells of the paper rows ``ref_rows`` (``itertuples`` rows
    of the reference), each accuracy marked with its source's number in ``notes``."""
    if not ref_rows:
        return "not reported", "not reported"
    accs, params = [], []
    for r in ref_rows:
        if r.source not in notes:
            notes.append(r.source)
        mark = f" [{notes.index(r.source) + 1}]"
        accs.append(f"{r.accuracy or 'not reported'}{' (vote)' if r.voting == 'yes' else ''}{mark}")
        params.append(r.trainable_params_M or "not reported")
    return "; ".join(accs), "; ".join(dict.fromkeys(params))


def _rows_by_key(frame: pd.DataFrame) -> dict[tuple, list]:
    """(backbone, method, variant) -> the ``itertuples`` rows of ``frame`` with those values, in
    order: what filtering ``frame`` on each key gives (a row with a missing value matches no key),
    in one pass instead of one filter per key."""
    out: dict[tuple, list] = {}
    for r in frame.itertuples():
        key = (r.backbone, r.method, r.variant)
        if not any(pd.isna(k) for k in key):
            out.setdefault(key, []).append(r)
    return out


def comparable_table(dataset: str, setups: pd.DataFrame, reference: pd.DataFrame) -> str:
    meas = setups[(setups.dataset == dataset) & setups.comparable]
    ref = reference[reference.dataset == dataset]
    keys = {(b, m, "") for b in BACKBONE_TITLES for m in ("full", "point_peft")}
    keys |= set(ref[["backbone", "method", "variant"]].itertuples(index=False, name=None))
    keys |= set(meas[["backbone", "method", "variant"]].itertuples(index=False, name=None))
    frame = pd.DataFrame(sorted(keys), columns=["backbone", "method", "variant"])
    order = frame.sort_values(["backbone", "method", "variant"], key=_order_key, kind="stable")
    notes: list[str] = []
    rows = []
    ref_by, meas_by = _rows_by_key(ref), _rows_by_key(meas)
    for b, m, v in order.itertuples(index=False, name=None):
        paper_acc, paper_params = _paper_cells(ref_by.get((b, m, v), []), notes)
        mine = meas_by.get((b, m, v), [])
        head = [BACKBONE_TITLES.get(b, b), METHOD_TITLES.get(m, m), VARIANT_TITLES.get(v, v)]
        if not mine:
            rows.append(head + ["", paper_acc, paper_params, "no run", "no run", "", "", "", ""])
        for r in mine:
            rows.append(head + [r.label, paper_acc, paper_params,
                                acc_cell(r.honest_mean, r.honest_std, r.honest_n, r.honest_kind),
                                acc_cell(r.legacy_mean, r.legacy_std, r.legacy_n, r.legacy_kind), *_cost(r)])
    headers = ["backbone", "method", "variant", "setup", "paper acc. (%)", "paper trainable (M)",
               "honest acc. (%)", "legacy acc. (%)", *COST_HEADERS]
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    if notes:
        text += "\n\n" + "  \n".join(f"[{i}] {s}" for i, s in enumerate(notes, 1))
    return text


def non_comparable_table(setups: pd.DataFrame) -> str:
    rows = [[DATASET_TITLES.get(r.dataset, r.dataset), BACKBONE_TITLES.get(r.backbone, r.backbone),
             METHOD_TITLES.get(r.method, r.method), VARIANT_TITLES.get(r.variant, r.variant), r.label,
             acc_cell(r.honest_mean, r.honest_std, r.honest_n, r.honest_kind),
             acc_cell(r.legacy_mean, r.legacy_std, r.legacy_n, r.legacy_kind),
             _f(r.chance), _f(r.majority), *_cost(r), r.reasons]
            for r in setups[~setups.comparable].itertuples()]
    headers = ["dataset", "backbone", "method", "variant", "setup", "honest acc. (%)",
               "legacy acc. (%)", "chance (%)", "majority class (%)", *COST_HEADERS, "not comparable because"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def paired_table(pairs: pd.DataFrame) -> str:
    def ci(r, sel):
        mean = getattr(r, f"{sel}_mean", math.nan)
        if mean is None or (isinstance(mean, float) and math.isnan(mean)):
            return "no value", ""
        low, high = getattr(r, f"{sel}_low"), getattr(r, f"{sel}_high")
        interval = "" if low is None or (isinstance(low, float) and math.isnan(low)) else f" [{low:+.2f}, {high:+.2f}]"
        return f"{mean:+.2f}{interval}", getattr(r, f"{sel}_verdict")
    rows = []
    for r in pairs.itertuples():
        h, hv = ci(r, "honest")
        g, gv = ci(r, "legacy")
        rows.append([DATASET_TITLES.get(r.dataset, r.dataset), BACKBONE_TITLES.get(r.backbone, r.backbone),
                     METHOD_TITLES.get(r.method, r.method), VARIANT_TITLES.get(r.variant, r.variant), r.label,
                     "yes" if r.comparable else "no", f"{r.n} ({r.seeds})", h, hv, g, gv])
    headers = ["dataset", "backbone", "PEFT method", "variant", "setup", "comparable", "paired seeds",
               "honest: mean diff. [95% CI]", "honest verdict", "legacy: mean diff. [95% CI]", "legacy verdict"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def failed_list(failed: list[dict], limit: int = 30) -> str:
    rows = []
    for r in failed[:limit]:
        err = r.get("error") or {}
        msg = str(err.get("message", "")).splitlines()[0][:110] if err.get("message") else ""
        rows.append([r["run_id"], r.get("dataset"), r.get("backbone"), r.get("method"), r.get("seed"),
                     f"{err.get('type', 'error')}: {msg}"])
    text = tabulate(rows, headers=["run_id", "dataset", "backbone", "method", "seed", "error"],
                    tablefmt="github", disable_numparse=True)
    if len(failed) > limit:
        text += f"\n\n... and {len(failed) - limit} more failed runs."
    return text


def dataset_baselines(dataset: str, setups: pd.DataFrame) -> str:
    rows = setups[(setups.dataset == dataset) & setups.comparable]
    _, _, n = _official(dataset)
    majority = rows.majority.dropna()
    maj = f"{majority.iloc[0]:.2f}%" if len(majority) else "shown once a comparable run recorded the test split's classes"
    return f"Baselines on the test split: chance {100 / n:.2f}%, majority class {maj}." if n else ""


def eval_not_comparable(r: dict) -> list[str]:
    """Why an eval record (``run_all.py eval``) is not comparable to the paper ([] when it is)."""
    reasons = ["synthetic data"] if r.get("data_source") == "synthetic" else []
    if r["split"] != "test":
        reasons.append(f"{r['split']} split")
    want = (_official(r["dataset"])[0] or {}).get("test")
    got = (r.get("data") or {}).get("samples")
    if r["split"] == "test" and want and got != want:
        reasons.append(f"partial data: {got} of {want:,} test samples")
    return reasons


def released_table(evals: list[dict], reference: pd.DataFrame) -> str:
    """One row per evaluated checkpoint file, beside the paper's number when comparable."""
    rows, notes = [], []
    for r in sorted(evals, key=lambda e: (e["dataset"], e["backbone"], e["method"], e.get("eval_id", ""))):
        m = r["metrics"]
        method = "point_peft" if r["method"].startswith("point_peft") else r["method"]
        reasons = eval_not_comparable(r)
        ref = reference[(reference.backbone == r["backbone"]) & (reference.method == method)
                        & (reference.dataset == r["dataset"]) & (reference.variant == (r.get("variant") or ""))]
        paper = "not comparable: " + "; ".join(reasons) if reasons else _paper_cells(list(ref.itertuples()), notes)[0]
        vote = f"{m['acc_vote']:.2f} ({m['votes']} votes)" if m.get("acc_vote") is not None else ""
        majority = m.get("majority_baseline")
        rows.append([f"{DATASET_TITLES.get(r['dataset'], r['dataset'])} ({r['split']})",
                     BACKBONE_TITLES.get(r["backbone"], r["backbone"]), METHOD_TITLES.get(method, method),
                     str(r["checkpoint"].get("sha256", ""))[:12], paper,
                     f"{m['acc']:.2f} ({m.get('correct')}/{m.get('seen')})", vote,
                     _f(majority) if majority is not None else ""])
    headers = ["dataset (split)", "backbone", "method", "checkpoint sha256", "paper acc. (%)",
               "measured acc. (%)", "with voting (%)", "majority class (%)"]
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    if notes:
        text += "\n\n" + "  \n".join(f"[{i}] {s}" for i, s in enumerate(notes, 1))
    return text


def render_markdown(setups: pd.DataFrame, pairs: pd.DataFrame, reference: pd.DataFrame, failed: list[dict],
                    notes: list[str], n_done: int, level: int = 2, evals: list[dict] | None = None) -> str:
    h = "#" * level
    parts = [
        "Each row is one setup: the runs of one resolved config (data and weights identified by content) "
        "that differ only in their seed; mean ± sample std (ddof=1) over distinct seeds (no std for n=1). "
        "Rows of one backbone/method/variant that differ in anything else are listed apart, labelled by what differs.",
        "**honest**: test accuracy at the best validation epoch where a validation split was carved from train, "
        "else the last epoch (no model selection). **legacy**: best epoch on the test set, or the best of the vote "
        "repeats for voting runs: what the official code reports, and what the paper's numbers are.",
        f"Generated by `python run_all.py tables` from {n_done} done and {len(failed)} failed run records; "
        "do not edit by hand. Accuracy in %, trainable parameters in millions, compute summed over resumed segments.",
    ]
    datasets = list(DATASET_TITLES) + sorted((set(reference.dataset) | set(setups[setups.comparable].dataset))
                                             - set(DATASET_TITLES))
    for dataset in datasets:
        parts += [f"{h} {DATASET_TITLES.get(dataset, dataset)} (comparable to the paper)",
                  dataset_baselines(dataset, setups), comparable_table(dataset, setups, reference)]
    if (~setups.comparable).any():
        parts += [f"{h} Not comparable to the paper",
                  "These setups differ from the paper's protocol (reasons in the last column): their numbers "
                  "check the pipeline or a variation, and are never shown or plotted beside the paper's.",
                  non_comparable_table(setups)]
    parts += [f"{h} PEFT minus full fine-tuning, paired by seed",
              f"Mean of the per-seed differences (percentage points) with a 95% Student-t interval. "
              f"Verdict \"matches or beats\" only when the interval's lower end is above -{stats.TOLERANCE_PP} "
              f"points (the tolerance: about the seed-to-seed std of these benchmarks); \"worse\" when its upper "
              f"end is below it; else \"inconclusive\". Comparable and non-comparable setups are never paired.",
              paired_table(pairs) if len(pairs) else "No PEFT and full fine-tuning setups with a common seed yet."]
    if evals:
        parts += [f"{h} Released checkpoints",
                  "Each row is one given checkpoint file (its sha256), evaluated once by `python run_all.py eval` "
                  "with no training and no selection by us (a released `ckpt-best.pth` is the authors' best "
                  "epoch on the test set); the majority-class baseline is that of the same split.",
                  released_table(evals, reference)]
    if notes:
        parts += [f"{h} Notes", "\n".join(f"- {n}" for n in notes)]
    if failed:
        parts += [f"{h} Failed runs (not counted above)", failed_list(failed)]
    return "\n\n".join(p for p in parts if p) + "\n"
