"""Each PEFT method's training cost relative to full fine-tuning: ours (from the ``models`` part
of a bench report) beside the published table of the official implementations
(``results/reference/peft_cost.csv``: STAG authors' README, one RTX 6000 Ada, batch 32, Point-MAE,
s/epoch and peak GB). Ratios are method / full fine-tuning of the same backbone, precision and
batch, so different machines compare: > 1 means slower / heavier than full fine-tuning."""
from __future__ import annotations

import csv
from pathlib import Path

from tabulate import tabulate

from harness.bench.common import ROOT

COST_CSV = ROOT / "results" / "reference" / "peft_cost.csv"


def published_ratios(path: Path = COST_CSV) -> dict[str, tuple[float, float]]:
    """method -> (s/epoch ratio, peak-memory ratio) to full fine-tuning, from the published table."""
    with open(path, newline="") as fh:
        rows = {r["method"]: (float(r["seconds_per_epoch"]), float(r["peak_memory_GB"])) for r in csv.DictReader(fh)}
    full = rows["full"]
    return {m: (s / full[0], g / full[1]) for m, (s, g) in rows.items()}


def ratio_rows(models: list[dict], published: dict[str, tuple[float, float]]) -> list[list[str]]:
    """One row per measured PEFT case with a full fine-tuning case of the same backbone,
    precision and batch: our step-time and peak-memory ratios, and the published ones."""
    models = [e for e in models if not e.get("variant")]  # lever variants: the memory-lever table
    full = {(e["backbone"], e["precision"], e["batch"]): e.get("values", {}) for e in models
            if e.get("method") == "full" and e.get("status") == "ok"}
    rows = []
    for e in models:
        ref = full.get((e.get("backbone"), e.get("precision"), e.get("batch")))
        v = e.get("values", {})
        if e.get("method") in (None, "full") or e.get("status") != "ok" or not ref:
            continue
        step = v["train_step_s"] / ref["train_step_s"] if ref.get("train_step_s") else None
        mem = (v["peak_train_memory_bytes"] / ref["peak_train_memory_bytes"]
               if ref.get("peak_train_memory_bytes") else None)
        pub = published.get(e["method"]) or published.get(e["method"] + "_faithful")
        rows.append([e["backbone"], e["method"], e["precision"], f"{step:.2f}" if step else "",
                     f"{mem:.2f}" if mem else "", f"{pub[0]:.2f}" if pub else "not published",
                     f"{pub[1]:.2f}" if pub else "not published"])
    return rows


def render(models: list[dict], level: int = 3) -> str:
    """The markdown section, or "" when no PEFT case has a full fine-tuning case beside it."""
    rows = ratio_rows(models, published_ratios())
    if not rows:
        return ""
    headers = ["backbone", "method", "precision", "train step / full (ours)", "peak train mem / full (ours)",
               "s/epoch / full (published)", "peak GB / full (published)"]
    return "\n\n".join([
        f"{'#' * level} PEFT cost relative to full fine-tuning",
        "Ours: median training step and peak training memory of each method over full fine-tuning of the "
        "same backbone, precision and batch (the rows above). Published: the official implementations on one "
        "RTX 6000 Ada, batch 32, Point-MAE, s/epoch and peak GB over full fine-tuning's 4.29 s / 6.1 GB "
        "(STAG authors' README; `results/reference/peft_cost.csv`); the published value of a method sits beside "
        "both its default and its faithful row. > 1 = slower / heavier than full fine-tuning.",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)])
