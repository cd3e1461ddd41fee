"""The zoo tables: per dataset, every method's row beside full fine-tuning, and a plot.

Input: the result records of one zoo experiment (``experiments/zoo.yaml`` or its synthetic smoke
version), plus the methods' published numbers (``results/reference/zoo.csv``). Per dataset, one
row per (backbone, method, variant, augmentation): trainable parameters, the published number
(official variant only), the honest and the legacy selection as mean ± std over seeds (n), the
paired difference to full fine-tuning of the same backbone / variant / seeds with its Student-t
95% interval, seconds per training epoch and peak memory. Runs on synthetic data get their own
section, never beside a published number. The plot: honest accuracy vs trainable parameters
(log), one marker per method, error bars = std over seeds.

Selections (as ``harness.results``): honest = test accuracy at the best validation epoch where a
validation split was carved from train, else at the last epoch; legacy = best epoch on the test
set (voting runs: the best vote), what every official repository reports.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from harness import results

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "results" / "reference" / "zoo.csv"
README_MARKERS = ("<!-- zoo:start -->", "<!-- zoo:end -->")
KEY = ["dataset", "backbone", "method", "variant", "augmentation", "data_source"]
AUGMENTATIONS = {"scale_translate": "scale&translate", "rotate_y": "rotation (per sample)",
                 "rotate_y_batch": "rotation (per batch)", "aug_rotate_y": "scale + rotation (per batch)",
                 "none": "none"}

# ------------------------------------------------------------------ statistics
# Stand-ins with the interface of the results package's paired statistics (``paired_interval``):
# two-sided Student-t 95% quantiles for 1..30 degrees of freedom, then the normal one.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


def paired_interval(diffs: list[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the mean paired difference, 95% Student-t; no interval for n < 2."""
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.960) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def honest(metrics: dict) -> tuple[float | None, str]:
    if metrics.get("acc_best_val") is not None:
        return metrics["acc_best_val"], "best val"
    return metrics.get("acc_last"), "last"


def legacy(metrics: dict) -> tuple[float | None, str]:
    if metrics.get("acc_vote") is not None:
        return metrics["acc_vote"], "vote"
    return metrics.get("acc_best_test"), "best test"


# ------------------------------------------------------------------ collect

def _seconds_per_epoch(record: dict, runs_dir: Path) -> float | None:
    """Mean training-epoch time: the record's field, else its run's metrics.csv."""
    if record.get("seconds_per_epoch") is not None:
        return float(record["seconds_per_epoch"])
    path = runs_dir / record["run_id"] / "metrics.csv"
    try:
        times = pd.read_csv(path)["epoch_time_s"]
    except (OSError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    return float(times.mean()) if len(times) else None


def collect(records: list[dict], runs_dir: Path, experiment: str) -> pd.DataFrame:
    """One row per done record of ``experiment``."""
    rows = []
    for r in records:
        if r["status"] != "done" or r.get("experiment") != experiment:
            continue
        cfg = r.get("config") or {}
        h, hk = honest(r["metrics"])
        g, gk = legacy(r["metrics"])
        rows.append({"dataset": r["dataset"], "backbone": r["backbone"], "method": r["method"],
                     "variant": r["variant"] or "", "augmentation": (cfg.get("train") or {}).get("augmentation", ""),
                     "data_source": r["data_source"], "seed": r["seed"], "honest": h, "honest_kind": hk,
                     "legacy": g, "legacy_kind": gk, "trainable": (r.get("params") or {}).get("trainable"),
                     "seconds_per_epoch": _seconds_per_epoch(r, runs_dir),
                     "peak_memory_bytes": r.get("peak_memory_bytes")})
    df = pd.DataFrame(rows, columns=KEY + ["seed", "honest", "honest_kind", "legacy", "legacy_kind", "trainable",
                                           "seconds_per_epoch", "peak_memory_bytes"])
    for col in ("honest", "legacy", "trainable", "seconds_per_epoch", "peak_memory_bytes"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df.drop_duplicates(KEY + ["seed"], keep="last")


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per KEY: n seeds, honest / legacy mean and std, costs; plus the paired
    difference to full fine-tuning of the same dataset, backbone, variant and data source."""
    if df.empty:
        return pd.DataFrame(columns=KEY)
    agg = df.groupby(KEY, sort=False, dropna=False).agg(
        n=("seed", "nunique"), honest_mean=("honest", "mean"), honest_std=("honest", "std"),
        honest_n=("honest", "count"), honest_kind=("honest_kind", "first"),
        legacy_mean=("legacy", "mean"), legacy_std=("legacy", "std"), legacy_n=("legacy", "count"),
        legacy_kind=("legacy_kind", "first"), trainable_M=("trainable", "mean"),
        seconds_per_epoch=("seconds_per_epoch", "mean"), peak_memory_GB=("peak_memory_bytes", "max")).reset_index()
    agg["trainable_M"] /= 1e6
    agg["peak_memory_GB"] /= 1e9
    by_seed = {key: g.set_index("seed") for key, g in df.groupby(KEY, sort=False, dropna=False)}
    for sel in ("honest", "legacy"):
        agg[f"{sel}_diff"] = agg[f"{sel}_low"] = agg[f"{sel}_high"] = math.nan
        agg[f"{sel}_pairs"] = 0
    pair_key = ["dataset", "backbone", "variant", "data_source"]
    for i, row in agg.iterrows():
        if row.method == "full":
            continue
        fulls = [k for k in by_seed if k[KEY.index("method")] == "full"
                 and all(k[KEY.index(c)] == row[c] for c in pair_key)]
        if len(fulls) != 1:
            continue
        a, b = by_seed[tuple(row[c] for c in KEY)], by_seed[fulls[0]]
        for sel in ("honest", "legacy"):
            seeds = [s for s in a.index.intersection(b.index) if pd.notna(a.at[s, sel]) and pd.notna(b.at[s, sel])]
            if not seeds:
                continue
            mean, low, high = paired_interval([float(a.at[s, sel] - b.at[s, sel]) for s in seeds])
            agg.loc[i, [f"{sel}_diff", f"{sel}_low", f"{sel}_high", f"{sel}_pairs"]] = [
                mean, math.nan if low is None else low, math.nan if high is None else high, len(seeds)]
    return agg


# ------------------------------------------------------------------ markdown

def _display(method: str) -> str:
    from models.peft import registry
    try:
        return registry.get(method).display
    except Exception:  # noqa: BLE001 - a record of a method this checkout does not register
        return method


def _order(method: str) -> tuple:
    from models.peft import registry
    names = list(registry.methods())
    return (names.index(method) if method in names else len(names), method)


def _acc(mean, std, n, kind: str) -> str:
    if not n:
        return "no value"
    tag = f", {kind}" if kind not in ("last", "best test") else ""
    return f"{mean:.2f} (n=1{tag})" if n == 1 else f"{mean:.2f} ± {std:.2f} (n={n}{tag})"


def _diff(row, sel: str) -> str:
    if row.method == "full":
        return "(reference)"
    pairs, diff, low, high = (getattr(row, f"{sel}_{k}") for k in ("pairs", "diff", "low", "high"))
    if not pairs:
        return "no paired full FT run"
    if math.isnan(low):
        return f"{diff:+.2f} (1 seed, no interval)"
    return f"{diff:+.2f} [{low:+.2f}, {high:+.2f}] (n={int(pairs)})"


def _num(v, fmt: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


HEADERS = ["method", "backbone", "variant", "augmentation", "trainable (M)", "published", "honest", "legacy",
           "Δ full FT, honest [95% CI]", "Δ full FT, legacy [95% CI]", "s/epoch", "peak mem. (GB)"]


def _published(reference: pd.DataFrame, row, notes: list[str]) -> str:
    if row.data_source != "official" or row.variant != "official":
        return ""
    ref = reference[(reference.dataset == row.dataset) & (reference.backbone == row.backbone)
                    & (reference.method == row.method.removesuffix("_faithful"))]
    cells = []
    for r in ref.itertuples():
        if r.source not in notes:
            notes.append(r.source)
        cells.append(f"{r.accuracy} [{notes.index(r.source) + 1}]")
    return "; ".join(cells) or "not reported"


def dataset_table(rows: pd.DataFrame, reference: pd.DataFrame, notes: list[str]) -> str:
    rows = rows.assign(_o=rows.method.map(_order)).sort_values(["backbone", "variant", "_o"], kind="stable")
    body = [[_display(r.method), results.BACKBONE_TITLES.get(r.backbone, r.backbone), r.variant or "-",
             AUGMENTATIONS.get(r.augmentation, r.augmentation), _num(r.trainable_M, "{:.3f}"),
             _published(reference, r, notes), _acc(r.honest_mean, r.honest_std, r.honest_n, r.honest_kind),
             _acc(r.legacy_mean, r.legacy_std, r.legacy_n, r.legacy_kind), _diff(r, "honest"), _diff(r, "legacy"),
             _num(r.seconds_per_epoch, "{:.2f}"), _num(r.peak_memory_GB, "{:.2f}")] for r in rows.itertuples()]
    return tabulate(body, headers=HEADERS, tablefmt="github", disable_numparse=True)


def reference_table(reference: pd.DataFrame, dataset: str, notes: list[str]) -> str:
    """Published numbers of a dataset with no zoo run yet."""
    ref = reference[reference.dataset == dataset]
    body = []
    for r in ref.itertuples():
        if r.source not in notes:
            notes.append(r.source)
        body.append([_display(r.method), results.BACKBONE_TITLES.get(r.backbone, r.backbone), r.trainable_params_M,
                     f"{r.accuracy} [{notes.index(r.source) + 1}]", AUGMENTATIONS.get(r.augmentation, r.augmentation),
                     "no run"])
    return tabulate(body, headers=["method", "backbone", "trainable (M)", "published", "augmentation", "measured"],
                    tablefmt="github", disable_numparse=True)


def render_markdown(summary: pd.DataFrame, reference: pd.DataFrame, experiment: str, n_records: int,
                    level: int = 2) -> str:
    h = "#" * level
    notes: list[str] = []
    parts = [f"Zoo experiment `{experiment}`: {n_records} done run records. Accuracy in %, mean ± sample std "
             "over seeds (n). **honest** = test accuracy at the best validation epoch (variants with a "
             "validation split), else at the last epoch; **legacy** = best epoch on the test set, as the "
             "official code reports. Δ full FT: the method minus full fine-tuning of the same backbone, "
             "variant and seeds, mean with its Student-t 95% interval. s/epoch: mean training epoch; peak "
             "memory of the run's process. Published numbers sit beside the `official` variant only. "
             "Generated by `python run_all.py zoo-tables`; do not edit by hand."]
    official = summary[summary.data_source == "official"] if len(summary) else summary
    datasets = list(results.DATASET_TITLES) + sorted(
        (set(reference.dataset) | set(getattr(official, "dataset", []))) - set(results.DATASET_TITLES))
    for dataset in datasets:
        parts.append(f"{h} {results.DATASET_TITLES.get(dataset, dataset)}")
        rows = official[official.dataset == dataset] if len(official) else official
        parts.append(dataset_table(rows, reference, notes) if len(rows) else reference_table(reference, dataset, notes))
    synthetic = summary[summary.data_source == "synthetic"] if len(summary) else summary
    if len(synthetic):
        parts += [f"{h} Synthetic data (pipeline checks, not reproductions)",
                  "Generated point clouds in the official file formats, narrow models, a few steps: these numbers "
                  "say only that every method trains through the pipeline."]
        for dataset in sorted(set(synthetic.dataset)):
            parts += [f"{h}# {results.DATASET_TITLES.get(dataset, dataset)} (synthetic)",
                      dataset_table(synthetic[synthetic.dataset == dataset], reference, notes)]
    if notes:
        parts.append("Sources: " + "; ".join(f"[{i + 1}] {s}" for i, s in enumerate(notes)) + ".")
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------ plot

MARKERS = "so^vD<>pP*hXd8H"
VARIANT_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def render_plot(rows: pd.DataFrame, title: str) -> bytes:
    """Honest accuracy vs trainable parameters (log x), one marker per method, std error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted(set(rows.method), key=_order)
    variants = sorted(set(rows.variant))
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=100)
    for r in rows.itertuples():
        if not r.honest_n or math.isnan(r.trainable_M):
            continue
        ax.errorbar(r.trainable_M, r.honest_mean, yerr=0 if math.isnan(r.honest_std) else r.honest_std,
                    fmt=MARKERS[methods.index(r.method) % len(MARKERS)],
                    color=VARIANT_COLORS[variants.index(r.variant) % len(VARIANT_COLORS)], markersize=7, capsize=3)
    handles = [plt.Line2D([], [], color="black", marker=MARKERS[i % len(MARKERS)], linestyle="", label=_display(m))
               for i, m in enumerate(methods)]
    handles += [plt.Line2D([], [], color=VARIANT_COLORS[i % len(VARIANT_COLORS)], marker="o", linestyle="",
                           label=f"variant {v or '-'}") for i, v in enumerate(variants)]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (M, log scale)")
    ax.set_ylabel("accuracy (%), honest selection, mean ± std")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------ outputs

def load_reference(path: Path | str = REFERENCE) -> pd.DataFrame:
    try:
        ref = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as err:
        raise results.ResultsError(f"{path}: cannot read the published zoo numbers: {err}") from None
    needed = {"backbone", "method", "dataset", "trainable_params_M", "accuracy", "augmentation", "source"}
    if not needed <= set(ref.columns):
        raise results.ResultsError(f"{path}: missing columns {', '.join(sorted(needed - set(ref.columns)))}")
    return ref


def build_outputs(runs_dir: Path | str, out_dir: Path | str, experiment: str = "zoo",
                  reference_path: Path | str = REFERENCE, readme: Path | str | None = None,
                  plots: bool = True) -> dict[Path, bytes]:
    """Every output's bytes (``out_dir/zoo.md``, ``out_dir/plots/zoo_<dataset>[_synthetic].png``,
    the README block); nothing is written here (``results.write_outputs`` does)."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    records = results.load_records(runs_dir) if runs_dir.is_dir() else []
    df = collect(records, runs_dir, experiment)
    summary = summarize(df)
    reference = load_reference(reference_path)
    outputs = {out_dir / "zoo.md": ("# The 3D PEFT zoo\n\n" + render_markdown(summary, reference, experiment,
                                                                              len(df))).encode()}
    if readme is not None:
        readme = Path(readme)
        try:
            current = readme.read_bytes()
        except FileNotFoundError:
            raise results.ResultsError(f"README not found: {readme} (or use --no-readme)") from None
        outputs[readme] = results.inject_readme(current, render_markdown(summary, reference, experiment, len(df),
                                                                         level=3), readme, markers=README_MARKERS)
    if plots and len(summary):
        for (dataset, source), rows in summary.groupby(["dataset", "data_source"], sort=True):
            suffix = "_synthetic" if source == "synthetic" else ""
            title = f"{results.DATASET_TITLES.get(dataset, dataset)}{' (synthetic pipeline check)' if suffix else ''}"
            outputs[out_dir / "plots" / f"zoo_{dataset}{suffix}.png"] = render_plot(rows, title)
    return outputs
