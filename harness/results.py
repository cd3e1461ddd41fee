"""Result records -> pandas -> markdown tables, summary CSV, README block, plots.

One JSON record per finished run (``results/runs/<run_id>/result.json``, schema below) is the
only input: tables are generated, never typed by hand. Everything is computed in memory
first (``build_outputs``) and written afterwards (``write_outputs``), each file atomically,
so a bad record or a README without markers leaves every output untouched.

Conventions (decided here, shown in the generated header):
- accuracies are in percent (0-100), as the official code prints them;
- measured cells are ``mean ± std (n=k)`` with the sample std (ddof=1) over the runs that have
  the selected metric; for n=1 the std is left out rather than shown as a misleading 0;
- records with ``data_source == "synthetic"`` are pipeline checks, never reproductions: they
  get their own section with no paper column beside them, and are not plotted.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable

import pandas as pd
from tabulate import tabulate

from models.errors import BenchError

SCHEMA_VERSION = 1
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"

# Record fields (schema 1). "failed" records need only the identity fields.
IDENTITY_FIELDS = ("run_id", "status", "backbone", "method", "dataset", "variant", "data_source", "seed")
RECORD_FIELDS = IDENTITY_FIELDS + (
    "schema", "experiment", "metrics", "params", "epochs", "wall_time_s", "train_samples_per_s",
    "peak_memory_bytes", "device", "world_size", "git_commit", "packages", "config", "config_hash",
    "start_time", "end_time", "error")
METRIC_FIELDS = ("acc_last", "acc_best_test", "best_test_epoch", "acc_best_val", "best_val_epoch", "acc_vote")
STATUSES = ("done", "failed")
DATA_SOURCES = ("official", "synthetic")

# selection -> (metric column, header text)
SELECTIONS = {
    "last": ("acc_last", "Accuracy: last epoch (no model selection)"),
    "best_val": ("acc_best_val", "Accuracy: test accuracy at the epoch with the best validation accuracy"),
    "best_test": ("acc_best_test", "Accuracy: best epoch on the test set (what the official code reports)"),
    "vote": ("acc_vote", "Accuracy: with voting (test-time augmentation)"),
}
GROUP = ["backbone", "method", "dataset", "variant", "data_source"]
ROW_KEY = ["backbone", "method", "variant"]

# Display order and names; unknown names sort after these and are shown as they are.
DATASET_TITLES = {
    "scanobjectnn_obj_bg": "ScanObjectNN OBJ_BG",
    "scanobjectnn_obj_only": "ScanObjectNN OBJ_ONLY",
    "scanobjectnn_pb_t50_rs": "ScanObjectNN PB_T50_RS",
    "modelnet40": "ModelNet40",
}
BACKBONE_TITLES = {"point_bert": "Point-BERT", "point_mae": "Point-MAE", "point_m2ae": "Point-M2AE"}
METHOD_TITLES = {"full": "full fine-tuning", "point_peft": "Point-PEFT"}
VARIANT_TITLES = {"": "-", "aug": "aug"}


class ResultsError(BenchError):
    """A result record, reference file or README that the tables cannot be built from."""


# ------------------------------------------------------------------ atomic files

def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    """Write via a temp file in the same folder + os.replace: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_record(path: Path | str, record: dict) -> None:
    """Write one result record atomically (strict JSON: NaN/inf are refused, not written)."""
    try:
        text = json.dumps(record, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ResultsError(f"{path}: record is not valid JSON data: {err}") from None
    write_bytes_atomic(path, (text + "\n").encode())


# ------------------------------------------------------------------ loading

def _check_record(record, where: Path) -> dict:
    if not isinstance(record, dict):
        raise ResultsError(f"{where}: a result record must be a JSON object, got {type(record).__name__}")
    if record.get("schema") != SCHEMA_VERSION:
        raise ResultsError(f"{where}: schema {record.get('schema')!r} is not supported (expected {SCHEMA_VERSION})")
    missing = [k for k in IDENTITY_FIELDS if k not in record]
    if missing:
        raise ResultsError(f"{where}: record lacks {', '.join(missing)}")
    if record["status"] not in STATUSES:
        raise ResultsError(f"{where}: status {record['status']!r} is not one of {', '.join(STATUSES)}")
    if record["data_source"] not in DATA_SOURCES:
        raise ResultsError(f"{where}: data_source {record['data_source']!r} is not one of {', '.join(DATA_SOURCES)}")
    if record["status"] == "done" and not isinstance(record.get("metrics"), dict):
        raise ResultsError(f"{where}: a done record needs a 'metrics' object")
    return record


def load_records(runs_dir: Path | str) -> list[dict]:
    """Every ``<runs_dir>/<run_id>/result.json``; run folders without one (running) are skipped."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ResultsError(f"runs directory not found: {runs_dir} (no runs yet, or a wrong --runs?)")
    records = []
    with os.scandir(runs_dir) as entries:
        names = sorted(e.name for e in entries if e.is_dir())
    for name in names:
        path = runs_dir / name / "result.json"
        try:
            with open(path, "rb") as f:
                record = json.load(f)
        except FileNotFoundError:
            continue
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ResultsError(f"{path}: bad JSON: {str(err).splitlines()[0]}") from None
        records.append(_check_record(record, path))
    return records


def load_eval_records(evals_dir: Path | str | None) -> list[dict]:
    """Every ``<evals_dir>/*.json`` written by ``run_all.py eval`` (kind "eval"); none if absent."""
    if evals_dir is None or not Path(evals_dir).is_dir():
        return []
    records = []
    for path in sorted(Path(evals_dir).glob("*.json")):
        try:
            record = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ResultsError(f"{path}: bad JSON: {str(err).splitlines()[0]}") from None
        if not isinstance(record, dict) or record.get("kind") != "eval" or not isinstance(record.get("metrics"), dict):
            raise ResultsError(f"{path}: not an eval record (kind 'eval' with a 'metrics' object)")
        records.append(record)
    return records


def load_reference(path: Path | str) -> pd.DataFrame:
    """The paper's numbers; values are kept as text too, so tables show them as published."""
    try:
        ref = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as err:
        raise ResultsError(f"{path}: cannot read the paper reference: {err}") from None
    needed = {"backbone", "method", "dataset", "variant", "trainable_params_M", "accuracy", "voting", "source"}
    if not needed <= set(ref.columns):
        raise ResultsError(f"{path}: missing columns {', '.join(sorted(needed - set(ref.columns)))}")
    ref["accuracy_value"] = pd.to_numeric(ref["accuracy"], errors="coerce")
    ref["params_value"] = pd.to_numeric(ref["trainable_params_M"], errors="coerce")
    return ref


# ------------------------------------------------------------------ collect + summarize

_COLUMNS = ["run_id", "experiment", *GROUP, "seed", "acc_last", "acc_best_test", "best_test_epoch",
            "acc_best_val", "best_val_epoch", "acc_vote", "params_total", "params_trainable", "epochs",
            "wall_time_s", "train_samples_per_s", "peak_memory_bytes", "device", "world_size",
            "git_commit", "config_hash", "start_time", "end_time"]


def _num(value):
    return math.nan if value is None else value


def collect(records: Iterable[dict]) -> pd.DataFrame:
    """One row per *done* record (failed ones go to ``collect_failed``); built from plain tuples."""
    rows = []
    for r in records:
        if r["status"] != "done":
            continue
        m, p = r["metrics"], r.get("params") or {}
        rows.append((r["run_id"], r.get("experiment"), r["backbone"], r["method"], r["dataset"],
                     r["variant"] or "", r["data_source"], r["seed"],
                     _num(m.get("acc_last")), _num(m.get("acc_best_test")), m.get("best_test_epoch"),
                     _num(m.get("acc_best_val")), m.get("best_val_epoch"), _num(m.get("acc_vote")),
                     _num(p.get("total")), _num(p.get("trainable")), r.get("epochs"),
                     r.get("wall_time_s"), r.get("train_samples_per_s"), r.get("peak_memory_bytes"),
                     r.get("device"), r.get("world_size"), r.get("git_commit"), r.get("config_hash"),
                     r.get("start_time"), r.get("end_time")))
    return pd.DataFrame.from_records(rows, columns=_COLUMNS)


def collect_failed(records: Iterable[dict]) -> pd.DataFrame:
    """One row per failed record: counted and listed, never averaged."""
    rows = []
    for r in records:
        if r["status"] == "failed":
            err = r.get("error") or {}
            rows.append((r["run_id"], r["backbone"], r["method"], r["dataset"], r["variant"] or "",
                         r["data_source"], r["seed"], err.get("type", ""), err.get("message", "")))
    return pd.DataFrame.from_records(rows, columns=["run_id", *GROUP, "seed", "error_type", "error_message"])


def summarize(df: pd.DataFrame, selection: str, failed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (backbone, method, dataset, variant, data_source): mean, std (ddof=1), n, params.

    ``n`` counts runs that have the selected metric, ``n_runs`` all done runs (e.g. best_val
    is null where a dataset has no validation split), ``n_failed`` the failed ones.
    """
    if selection not in SELECTIONS:
        raise ResultsError(f"unknown selection {selection!r}; choose from {', '.join(SELECTIONS)}")
    metric = SELECTIONS[selection][0]
    stats = (df.groupby(GROUP, sort=False)
               .agg(n=(metric, "count"), n_runs=("run_id", "size"), mean=(metric, "mean"),
                    std=(metric, "std"), trainable=("params_trainable", "mean"))
               .reset_index())
    stats["trainable_params_M"] = stats.pop("trainable") / 1e6
    if failed is not None and len(failed):
        counts = failed.groupby(GROUP, sort=False).size().rename("n_failed").reset_index()
        stats = stats.merge(counts, on=GROUP, how="outer")
        stats[["n", "n_runs"]] = stats[["n", "n_runs"]].fillna(0)
    else:
        stats["n_failed"] = 0
    stats[["n", "n_runs", "n_failed"]] = stats[["n", "n_runs", "n_failed"]].fillna(0).astype(int)
    stats.insert(len(GROUP), "selection", selection)
    stats.insert(len(GROUP) + 1, "metric", metric)
    stats = stats[[*GROUP, "selection", "metric", "n", "n_runs", "n_failed", "mean", "std", "trainable_params_M"]]
    return stats.sort_values(GROUP, key=_order_key, kind="stable").reset_index(drop=True)


def _order_key(col: pd.Series) -> pd.Series:
    known = {"backbone": list(BACKBONE_TITLES), "method": list(METHOD_TITLES),
             "dataset": list(DATASET_TITLES), "variant": ["", "aug"], "data_source": list(DATA_SOURCES)}
    order = known.get(col.name)
    if not order:
        return col
    return col.map(lambda v: f"{order.index(v):03d}" if v in order else f"999{v}")


# ------------------------------------------------------------------ markdown

def measured_cell(row) -> str:
    """'mean ± std (n=k)', std left out for n=1; says 'no run' / why a value is missing."""
    failed = f"; {row.n_failed} failed" if row.n_failed else ""
    if row.n_runs == 0:
        return f"no run ({row.n_failed} failed)" if row.n_failed else "no run"
    if row.n == 0:
        runs = "1 run" if row.n_runs == 1 else f"{row.n_runs} runs"
        return f"no value ({row.metric} is null in {runs}{failed})"
    if row.n == 1:
        return f"{row.mean:.2f} (n=1{failed})"
    return f"{row.mean:.2f} ± {row.std:.2f} (n={row.n}{failed})"


def _params_cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _paper_cells(ref_rows: pd.DataFrame, notes: list[str]) -> tuple[str, str]:
    """Paper accuracy and params for one row; several sources are listed with footnote marks."""
    if ref_rows.empty:
        return "not reported", "not reported"
    accs, params = [], []
    for r in ref_rows.itertuples():
        if r.source not in notes:
            notes.append(r.source)
        mark = f" [{notes.index(r.source) + 1}]"
        vote = " (vote)" if r.voting == "yes" else ""
        accs.append(f"{r.accuracy or 'not reported'}{vote}{mark}")
        params.append((r.trainable_params_M or "not reported", mark))
    if len({p for p, _ in params}) == 1:
        param_text = params[0][0]
    else:
        param_text = "; ".join(p + m for p, m in params)
    return "; ".join(accs), param_text


def _sorted_keys(keys: set[tuple]) -> list[tuple]:
    frame = pd.DataFrame(sorted(keys), columns=ROW_KEY)
    return list(frame.sort_values(ROW_KEY, key=_order_key, kind="stable").itertuples(index=False, name=None))


def _dataset_table(dataset: str, summary: pd.DataFrame, reference: pd.DataFrame) -> str:
    measured = summary[(summary.dataset == dataset) & (summary.data_source == "official")]
    ref = reference[reference.dataset == dataset]
    keys = {(b, m, "") for b in BACKBONE_TITLES for m in METHOD_TITLES}  # the paper's grid
    keys |= set(ref[ROW_KEY].itertuples(index=False, name=None))
    keys |= set(measured[ROW_KEY].itertuples(index=False, name=None))
    by_key = {(r.backbone, r.method, r.variant): r for r in measured.itertuples()}
    notes: list[str] = []
    rows = []
    for key in _sorted_keys(keys):
        backbone, method, variant = key
        paper_acc, paper_params = _paper_cells(
            ref[(ref.backbone == backbone) & (ref.method == method) & (ref.variant == variant)], notes)
        row = by_key.get(key)
        rows.append([BACKBONE_TITLES.get(backbone, backbone), METHOD_TITLES.get(method, method),
                     VARIANT_TITLES.get(variant, variant), paper_acc, paper_params,
                     measured_cell(row) if row is not None else "no run",
                     _params_cell(row.trainable_params_M) if row is not None else ""])
    headers = ["backbone", "method", "variant", "paper acc. (%)", "paper trainable (M)",
               "measured acc. (%)", "measured trainable (M)"]
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    if notes:
        text += "\n\n" + "  \n".join(f"[{i}] {s}" for i, s in enumerate(notes, 1))
    return text


def _synthetic_table(summary: pd.DataFrame) -> str:
    synth = summary[summary.data_source == "synthetic"]
    synth = synth.sort_values(["dataset", *ROW_KEY], key=_order_key, kind="stable")
    rows = [[DATASET_TITLES.get(r.dataset, r.dataset), BACKBONE_TITLES.get(r.backbone, r.backbone),
             METHOD_TITLES.get(r.method, r.method), VARIANT_TITLES.get(r.variant, r.variant),
             measured_cell(r), _params_cell(r.trainable_params_M)] for r in synth.itertuples()]
    headers = ["dataset", "backbone", "method", "variant", "acc. on synthetic data (%)", "trainable (M)"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _failed_list(failed: pd.DataFrame, limit: int = 30) -> str:
    rows = [[r.run_id, r.backbone, r.method, r.dataset, r.variant, r.data_source, r.seed,
             f"{r.error_type}: {str(r.error_message).splitlines()[0][:100] if r.error_message else ''}"]
            for r in failed.head(limit).itertuples()]
    text = tabulate(rows, headers=["run_id", "backbone", "method", "dataset", "variant", "data", "seed", "error"],
                    tablefmt="github", disable_numparse=True)
    if len(failed) > limit:
        text += f"\n\n... and {len(failed) - limit} more failed runs."
    return text


def render_markdown(summary: pd.DataFrame, reference: pd.DataFrame, selection: str,
                    failed: pd.DataFrame | None = None, level: int = 2, evals: list[dict] | None = None) -> str:
    """All tables as markdown; ``level`` is the heading level of the sections (2 in tables.md)."""
    h = "#" * level
    metric, label = SELECTIONS[selection]
    failed = failed if failed is not None else collect_failed([])
    n_done = int(summary.n_runs.sum())
    n_synthetic = int(summary[summary.data_source == "synthetic"].n_runs.sum())
    datasets = list(DATASET_TITLES) + sorted(
        (set(reference.dataset) | set(summary[summary.data_source == "official"].dataset)) - set(DATASET_TITLES))
    parts = [
        f"**{label}** (selection `{selection}`, record field `metrics.{metric}`).",
        "Measured: mean ± sample std (ddof=1) over seeds, n = runs with a value (no std for n=1); "
        "accuracy in %, trainable parameters in millions. Paper values as published, with their source.",
        f"Generated by `python run_all.py tables` from {n_done} done ({n_synthetic} on synthetic data) and "
        f"{len(failed)} failed run records; "
        "do not edit by hand.",
    ]
    for dataset in datasets:
        parts += [f"{h} {DATASET_TITLES.get(dataset, dataset)}", _dataset_table(dataset, summary, reference)]
    if (summary.data_source == "synthetic").any():
        parts += [f"{h} Synthetic data (pipeline checks, not reproductions)",
                  "These runs used generated point clouds in the official file formats. Their accuracy says "
                  "only that the pipeline trains; it is not comparable to the paper and is never shown beside it.",
                  _synthetic_table(summary)]
    if evals:
        parts += [f"{h} Released checkpoints",
                  "Each row is one given checkpoint file (its sha256), evaluated once by `python run_all.py eval` "
                  "with no training and no selection by us (a released `ckpt-best.pth` is the authors' best "
                  "epoch on the test set); the majority-class baseline is that of the same split.",
                  _released_table(evals, reference)]
    if len(failed):
        parts += [f"{h} Failed runs (not counted above)", _failed_list(failed)]
    return "\n\n".join(parts) + "\n"


def _released_table(evals: list[dict], reference: pd.DataFrame) -> str:
    """One row per evaluated checkpoint file, beside the paper's number for that setup."""
    rows, notes = [], []
    for r in sorted(evals, key=lambda e: (e["dataset"], e["backbone"], e["method"], e["eval_id"])):
        m = r["metrics"]
        method = "point_peft" if r["method"].startswith("point_peft") else r["method"]
        official = r.get("data_source") == "official"
        ref = reference[(reference.backbone == r["backbone"]) & (reference.method == method)
                        & (reference.dataset == r["dataset"]) & (reference.variant == (r.get("variant") or ""))]
        paper = _paper_cells(ref, notes)[0] if official else "synthetic data: not comparable"
        vote = f"{m['acc_vote']:.2f} ({m['votes']} votes)" if m.get("acc_vote") is not None else ""
        rows.append([DATASET_TITLES.get(r["dataset"], r["dataset"]) + f" ({r['split']})",
                     BACKBONE_TITLES.get(r["backbone"], r["backbone"]), METHOD_TITLES.get(method, method),
                     r["checkpoint"]["sha256"][:12], paper, f"{m['acc']:.2f} ({m['correct']}/{m['seen']})",
                     vote, f"{m['majority_baseline']:.2f}"])
    headers = ["dataset (split)", "backbone", "method", "checkpoint sha256", "paper acc. (%)",
               "measured acc. (%)", "with voting (%)", "majority class (%)"]
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    if notes:
        text += "\n\n" + "  \n".join(f"[{i}] {s}" for i, s in enumerate(notes, 1))
    return text


# ------------------------------------------------------------------ README

class MarkersMissing(ResultsError):
    """A README without (or with broken) markers for the block to replace."""


def inject_readme(readme: bytes, block: str, where: Path | str = "README",
                  markers: tuple[str, str] = (README_START, README_END)) -> bytes:
    """Replace only what lies between the markers; every byte outside them is kept."""
    start, end = (m.encode() for m in markers)
    if readme.count(start) != 1 or readme.count(end) != 1 or readme.index(start) > readme.index(end):
        raise MarkersMissing(f"{where}: needs exactly one '{markers[0]}' followed by one '{markers[1]}' "
                             "line where the tables go (or use --no-readme)")
    newline = "\r\n" if b"\r\n" in readme else "\n"
    body = newline + block.strip("\n").replace("\n", newline) + newline
    i, j = readme.index(start) + len(start), readme.index(end)
    return readme[:i] + body.encode() + readme[j:]


# ------------------------------------------------------------------ plots

_COLORS = {"point_bert": "tab:blue", "point_mae": "tab:orange", "point_m2ae": "tab:green"}
_MARKERS = {"full": "s", "point_peft": "o"}


def render_plot(dataset: str, summary: pd.DataFrame, reference: pd.DataFrame, selection: str) -> bytes:
    """Accuracy vs trainable parameters (log x): paper hollow, measured filled with std bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = reference[(reference.dataset == dataset) & reference.accuracy_value.notna() & reference.params_value.notna()]
    meas = summary[(summary.dataset == dataset) & (summary.data_source == "official") & (summary.n > 0)
                   & summary.trainable_params_M.notna()]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    for r in ref.itertuples():
        color, marker = _COLORS.get(r.backbone, "tab:gray"), _MARKERS.get(r.method, "^")
        ax.scatter(r.params_value, r.accuracy_value, s=50, marker=marker, facecolors="none", edgecolors=color)
    for r in meas.itertuples():
        color, marker = _COLORS.get(r.backbone, "tab:gray"), _MARKERS.get(r.method, "^")
        ax.errorbar(r.trainable_params_M, r.mean, yerr=0 if math.isnan(r.std) else r.std, fmt=marker,
                    color=color, markersize=7, capsize=3)
        label = f"n={r.n}" + (f" {r.variant}" if r.variant else "")
        ax.annotate(label, (r.trainable_params_M, r.mean), textcoords="offset points", xytext=(5, 4), fontsize=7)
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=BACKBONE_TITLES.get(b, b))
               for b, c in _COLORS.items()]
    handles += [plt.Line2D([], [], color="black", marker=m, linestyle="", label=METHOD_TITLES.get(k, k))
                for k, m in _MARKERS.items()]
    handles += [plt.Line2D([], [], color="black", marker="o", markerfacecolor="none", linestyle="", label="paper"),
                plt.Line2D([], [], color="black", marker="o", linestyle="", label="measured (mean ± std)")]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (M, log scale)")
    ax.set_ylabel("accuracy (%)")
    title = f"{DATASET_TITLES.get(dataset, dataset)}: {SELECTIONS[selection][1].split(': ', 1)[1]}"
    ax.set_title(title if len(meas) else title + "\n(no measured runs yet)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------ all outputs

def build_outputs(runs_dir: Path | str, out_dir: Path | str, selection: str, reference_path: Path | str,
                  readme: Path | str | None = None, plots: bool = True,
                  evals_dir: Path | str | None = None) -> dict[Path, bytes]:
    """Compute every output file's bytes; nothing is written here (see ``write_outputs``)."""
    out_dir = Path(out_dir)
    records = load_records(runs_dir)
    evals = load_eval_records(evals_dir)
    reference = load_reference(reference_path)
    failed = collect_failed(records)
    summary = summarize(collect(records), selection, failed)
    outputs = {
        out_dir / "tables.md": ("# Results\n\n" + render_markdown(summary, reference, selection, failed,
                                                                   evals=evals)).encode(),
        out_dir / "summary.csv": summary.to_csv(index=False, lineterminator="\n").encode(),
    }
    if readme is not None:
        readme = Path(readme)
        try:
            current = readme.read_bytes()
        except FileNotFoundError:
            raise ResultsError(f"README not found: {readme} (or use --no-readme)") from None
        outputs[readme] = inject_readme(current, render_markdown(summary, reference, selection, failed, level=3,
                                                                 evals=evals), readme)
    if plots:
        datasets = set(reference.dataset) | set(summary[summary.data_source == "official"].dataset)
        for dataset in sorted(datasets):
            outputs[out_dir / "plots" / f"{dataset}.png"] = render_plot(dataset, summary, reference, selection)
    return outputs


def write_outputs(outputs: dict[Path, bytes]) -> list[Path]:
    """Write each file atomically, skipping those whose bytes are unchanged; returns those written."""
    written = []
    for path, data in outputs.items():
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == data:
                continue
        write_bytes_atomic(path, data)
        written.append(path)
    return written
