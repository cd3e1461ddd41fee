"""The zoo tables: per dataset, every method's row beside full fine-tuning, and a plot.

Input: the result records of one zoo experiment (``experiments/zoo.yaml`` or its synthetic smoke
version), plus the methods' published numbers (``results/reference/zoo.csv``). The rows are the
setups of ``harness.results.tables`` (one resolved config without its seed, distinct seeds
averaged) and the paired differences its ``paired`` computes (``harness.results.stats``). Per
dataset, one row per setup (backbone, method, variant, augmentation): trainable parameters, the published number
(official variant only), the honest and the legacy selection as mean ± std over seeds (n), the
paired difference to full fine-tuning of the same backbone / variant / seeds with its Student-t
95% interval, seconds per training epoch and peak memory. Runs on synthetic data get their own
section, never beside a published number. The plot: honest accuracy vs trainable parameters
(log), one marker per method, error bars = std over seeds.

Selections (``harness.results.tables``): honest = test accuracy at the best validation epoch where a
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
from harness.results import tables as rt

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "results" / "reference" / "zoo.csv"
README_MARKERS = ("<!-- zoo:start -->", "<!-- zoo:end -->")
AUGMENTATIONS = {"scale_translate": "scale&translate", "rotate_y": "rotation (per sample)",
                 "rotate_y_batch": "rotation (per batch)", "aug_rotate_y": "scale + rotation (per batch)",
                 "none": "none"}

# ------------------------------------------------------------------ collect (the results package's setups)

def compute(records: list[dict], experiment: str) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The setups of ``experiment`` (``harness.results.tables``: one row per resolved config
    without its seed, honest / legacy mean ± std over distinct seeds, costs), each with its
    augmentation and its paired difference to full fine-tuning (``tables.paired``); and the
    configs by setup id."""
    mine = [r for r in records if r.get("experiment") == experiment]
    runs, configs = rt.collect(mine)
    setups, _ = rt.summarize(runs, configs, [r for r in mine if r["status"] == "failed"])
    if setups.empty:
        return setups, configs
    setups["augmentation"] = setups.setup_id.map(
        lambda s: ((configs.get(s) or {}).get("train") or {}).get("augmentation", ""))
    pairs = rt.paired(runs, setups)
    for sel in ("honest", "legacy"):
        for part in ("mean", "low", "high"):
            setups[f"{sel}_diff_{part}"] = math.nan
    setups["pairs_n"] = 0
    if len(pairs):
        first = pairs.drop_duplicates("peft_setup").set_index("peft_setup")
        for i, sid in setups.setup_id.items():
            if sid not in first.index:
                continue
            p = first.loc[sid]
            setups.loc[i, "pairs_n"] = int(p.n)
            for sel in ("honest", "legacy"):
                for part in ("mean", "low", "high"):
                    value = p.get(f"{sel}_{part}")
                    setups.loc[i, f"{sel}_diff_{part}"] = math.nan if value is None or pd.isna(value) else value
    return setups, configs


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


def _diff(row, sel: str) -> str:
    if row.method == "full":
        return "(reference)"
    mean, low, high = (getattr(row, f"{sel}_diff_{k}") for k in ("mean", "low", "high"))
    if not row.pairs_n or math.isnan(mean):
        return "no paired full FT run"
    if math.isnan(low):
        return f"{mean:+.2f} (1 seed, no interval)"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] (n={int(row.pairs_n)})"


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
    body = [[_display(r.method), rt.BACKBONE_TITLES.get(r.backbone, r.backbone), r.variant or "-",
             AUGMENTATIONS.get(r.augmentation, r.augmentation), _num(r.trainable_M, "{:.3f}"),
             _published(reference, r, notes), rt.acc_cell(r.honest_mean, r.honest_std, r.honest_n, r.honest_kind),
             rt.acc_cell(r.legacy_mean, r.legacy_std, r.legacy_n, r.legacy_kind), _diff(r, "honest"), _diff(r, "legacy"),
             _num(r.seconds_per_epoch, "{:.2f}"), _num(r.peak_memory_GB, "{:.2f}")] for r in rows.itertuples()]
    return tabulate(body, headers=HEADERS, tablefmt="github", disable_numparse=True)


def reference_table(reference: pd.DataFrame, dataset: str, notes: list[str]) -> str:
    """Published numbers of a dataset with no zoo run yet."""
    ref = reference[reference.dataset == dataset]
    body = []
    for r in ref.itertuples():
        if r.source not in notes:
            notes.append(r.source)
        body.append([_display(r.method), rt.BACKBONE_TITLES.get(r.backbone, r.backbone), r.trainable_params_M,
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
    datasets = list(rt.DATASET_TITLES) + sorted(
        (set(reference.dataset) | set(getattr(official, "dataset", []))) - set(rt.DATASET_TITLES))
    for dataset in datasets:
        parts.append(f"{h} {rt.DATASET_TITLES.get(dataset, dataset)}")
        rows = official[official.dataset == dataset] if len(official) else official
        parts.append(dataset_table(rows, reference, notes) if len(rows) else reference_table(reference, dataset, notes))
    synthetic = summary[summary.data_source == "synthetic"] if len(summary) else summary
    if len(synthetic):
        parts += [f"{h} Synthetic data (pipeline checks, not reproductions)",
                  "Generated point clouds in the official file formats, narrow models, a few steps: these numbers "
                  "say only that every method trains through the pipeline."]
        for dataset in sorted(set(synthetic.dataset)):
            parts += [f"{h}# {rt.DATASET_TITLES.get(dataset, dataset)} (synthetic)",
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
    records = results.load_records(runs_dir)[0] if runs_dir.is_dir() else []
    summary, _ = compute(records, experiment)
    n_runs = sum(1 for r in records if r.get("experiment") == experiment and r["status"] == "done")
    reference = load_reference(reference_path)
    outputs = {out_dir / "zoo.md": ("# The 3D PEFT zoo\n\n" + render_markdown(summary, reference, experiment,
                                                                              n_runs)).encode()}
    if readme is not None:
        readme = Path(readme)
        try:
            current = readme.read_bytes()
        except FileNotFoundError:
            raise results.ResultsError(f"README not found: {readme} (or use --no-readme)") from None
        outputs[readme] = results.inject_readme(current, render_markdown(summary, reference, experiment, n_runs,
                                                                         level=3), readme, markers=README_MARKERS)
    if plots and len(summary):
        for (dataset, source), rows in summary.groupby(["dataset", "data_source"], sort=True):
            suffix = "_synthetic" if source == "synthetic" else ""
            title = f"{rt.DATASET_TITLES.get(dataset, dataset)}{' (synthetic pipeline check)' if suffix else ''}"
            outputs[out_dir / "plots" / f"zoo_{dataset}{suffix}.png"] = render_plot(rows, title)
    return outputs
