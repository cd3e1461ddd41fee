"""Bench part ``scaling``: how step time and peak memory grow with points and with batch.

For each backbone x method (full, point_peft), the training step of the ``models`` part
(``model_cases.measure_one``, one fresh process per point) is measured

* as the input grows: 1,024, 2,048, 4,096, 8,192 points at batch ``POINTS_BATCH`` (8), with the
  backbone's official patch geometry (number and size of groups stay fixed, so what grows is
  grouping: FPS and kNN);
* as the batch grows: 8, 16, 32, 64 at the backbone's ScanObjectNN input size.

Per series the growth exponent is the least-squares slope of log(y) on log(x): time ~ x^a.
A case that fails (for instance out of memory at batch 64) is kept as an error entry and left
out of the fit. ``--quick``: one backbone (Point-MAE unless --backbone says otherwise), two
sizes per axis (1,024 / 2,048 points, batch 2 / 4), one timed step: a CI-sized smoke run.
"""
from __future__ import annotations

import math

from harness.bench import model_cases

POINTS = (1024, 2048, 4096, 8192)
BATCHES = (8, 16, 32, 64)
POINTS_BATCH = 8
QUICK_POINTS, QUICK_BATCHES, QUICK_POINTS_BATCH = (1024, 2048), (2, 4), 2
METHODS = ("full", "point_peft")
METRICS = {"train_step_s": "s / train step", "peak_train_memory_bytes": "peak train memory (bytes)"}


def scaling_specs(device: str, quick: bool, backbones=None, threads: int | None = None) -> list[dict]:
    """One ``measure_one`` spec per (backbone, method, axis, size)."""
    from models.classifier import BACKBONES, default_npoints

    if quick and not backbones:
        backbones = ["point_mae"]
    points, batches, points_batch = ((QUICK_POINTS, QUICK_BATCHES, QUICK_POINTS_BATCH) if quick
                                     else (POINTS, BATCHES, POINTS_BATCH))
    steps = (1, 1) if quick else (1, 2)  # (warm-up, timed): the first step pays for the allocator
    specs = []
    for backbone in BACKBONES:
        if backbones and backbone not in backbones:
            continue
        for method in METHODS:
            base = {"backbone": backbone, "method": method, "family": model_cases.FAMILY,
                    "num_classes": model_cases.NUM_CLASSES, "precision": "fp32", "device": device,
                    "warmup": steps[0], "steps": steps[1], "eval_warmup": 0, "eval_steps": 1,
                    "bank_columns": model_cases.BANK_COLUMNS, "seed": 0, "backbone_options": {},
                    "method_options": {}, "threads": threads, "variant": None}
            for n in points:
                specs.append({**base, "axis": "points", "npoints": n, "batch": points_batch})
            for b in batches:
                specs.append({**base, "axis": "batch", "npoints": default_npoints(backbone, model_cases.FAMILY),
                              "batch": b})
    return specs


def run_scaling(device: str, quick: bool, log=print, backbones=None, threads: int | None = None,
                entries: list | None = None) -> list[dict]:
    """Measure every scaling spec (fresh process each); entries as in the models part plus
    ``axis``, each appended to ``entries`` (a new list by default) as its case finishes."""
    entries = [] if entries is None else entries
    for spec in scaling_specs(device, quick, backbones, threads):
        entry = model_cases.run_specs([spec], log=lambda msg: None, timeout_s=1800)[0]
        entry["axis"] = spec["axis"]
        entry["name"] = f"{spec['backbone']} / {spec['method']}: {spec['npoints']} points, batch {spec['batch']}"
        v = entry["values"]
        log(f"scaling: {entry['name']}: " + (f"{v['train_step_s']:.3f} s/step, "
                                             f"+{v['peak_train_memory_bytes'] / 2**20:,.0f} MiB"
                                             if entry["status"] == "ok" else entry["notes"]))
        entries.append(entry)
    return entries


def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log x (None with fewer than two positive points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def series(entries: list[dict]) -> list[dict]:
    """Group the ok entries by (backbone, method, axis): x, the metrics and their exponents."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        if e.get("status") == "ok":
            groups.setdefault((e["backbone"], e["method"], e["axis"]), []).append(e)
    out = []
    for (backbone, method, axis), items in groups.items():
        items.sort(key=lambda e: e["npoints"] if axis == "points" else e["batch"])
        xs = [e["npoints"] if axis == "points" else e["batch"] for e in items]
        row = {"backbone": backbone, "method": method, "axis": axis, "x": xs,
               "fixed": f"batch {items[0]['batch']}" if axis == "points" else f"{items[0]['npoints']} points"}
        for metric in METRICS:
            ys = [e["values"][metric] for e in items]
            row[metric] = ys
            row[f"{metric}_exponent"] = fit_exponent(xs, ys)
        out.append(row)
    return out


def plot(entries: list[dict], path) -> None:
    """Log-log PNG: rows = step time, peak memory; columns = points axis, batch axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter

    rows = series(entries)
    fig, axes = plt.subplots(2, 2, figsize=(12, 10), squeeze=False)
    for c, axis in enumerate(("points", "batch")):
        for r, metric in enumerate(METRICS):
            ax = axes[r][c]
            ys_all = []
            for row in (s for s in rows if s["axis"] == axis):
                ys = row[metric] if metric == "train_step_s" else [y / 2**20 for y in row[metric]]
                ys_all += ys
                k = row[f"{metric}_exponent"]
                label = f"{row['backbone']} / {row['method']}" + (f" (x^{k:.2f})" if k is not None else "")
                ax.loglog(row["x"], ys, marker="o", label=label)
            sizes = sorted({x for s in rows if s["axis"] == axis for x in s["x"]})
            if sizes:  # plain numbers at the measured sizes, not 2 x 10^3
                ax.set_xticks(sizes)
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            if ys_all and max(ys_all) < 10 * min(ys_all):  # under a decade: ticks at 1.2, 1.4, ... too
                ax.yaxis.set_minor_locator(LogLocator(subs=(1.2, 1.4, 1.6, 1.8, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)))
            plain = FuncFormatter(lambda v, _: f"{v:g}")  # 1.5 and 300, not 1.5 x 10^0
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            # what is held fixed, per backbone when they differ (e.g. each one's own input size)
            fixed = {s["backbone"]: s["fixed"] for s in rows if s["axis"] == axis}
            held = (next(iter(fixed.values())) if len(set(fixed.values())) == 1
                    else ", ".join(f"{b}: {f}" for b, f in fixed.items()))
            label = ("input points" if axis == "points" else "batch size") + (f" ({held})" if held else "")
            two_lines = len(label) > 60   # per-backbone sizes: on a second line, inside the panel's width
            ax.set_xlabel(label.replace(" (", "\n(", 1) if two_lines else label, fontsize=9 if two_lines else None)
            ax.set_ylabel("seconds per training step" if metric == "train_step_s" else "peak train memory (MiB)")
            ax.grid(True, which="both", alpha=0.3)
            # below the panel, off the data
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2 if two_lines else -0.14), ncol=2,
                      frameon=False)
    fig.suptitle("Training-step cost curves (fitted growth exponent in the legend)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
