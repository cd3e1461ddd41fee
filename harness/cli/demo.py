"""``run_all.py demo``: the whole pipeline on a fresh machine, in minutes, on the CPU.

Writes synthetic data in the official formats, runs ``experiments/smoke.yaml`` on the local
executor, builds the tables and plots from the records, and says where everything is. It keeps
its runs and outputs under ``results/demo/`` so it never mixes with real results; running it
again skips the finished runs.
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

from harness import matrix, results
from harness.cli import submit
from harness.config import resolve_path
from harness.data.synthetic import write_synthetic

HELP = """\
Run the pipeline end to end on synthetic data (no downloads, no GPU): write small datasets in
the official file formats, train every run of experiments/smoke.yaml on the local executor,
collect the result records into tables and plots. Outputs go to results/demo/ (runs/,
tables.md, summary.csv, plots/). The numbers are pipeline checks, not reproductions."""

SYNTH = {"num_classes": 5, "train_per_class": 16, "test_per_class": 8, "seed": 0}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic data -> smoke matrix -> tables and plots, on the CPU",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="experiments/smoke.yaml", help="matrix to run (default smoke)")
    p.add_argument("--out", default="results/demo", metavar="DIR", help="outputs (default results/demo)")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="runs at a time (default 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    start = time.perf_counter()
    out = resolve_path(args.out)
    specs = matrix.expand(resolve_path(args.experiment), runs_dir=out / "runs")
    for root, dataset in sorted({(s.config["data"]["root"], s.config["data"]["dataset"]) for s in specs}):
        path = resolve_path(root)
        if not path.is_dir():
            write_synthetic(dataset, path, **SYNTH)
            print(f"wrote synthetic {dataset} to {path}")
    status = submit.run_submit(SimpleNamespace(
        experiment=str(resolve_path(args.experiment)), only=None, seeds=None, runs_dir=str(out / "runs"),
        executor="local", profile=None, dry_run=False, wait=True, parallel=args.parallel, logs=str(out / "submitit")))
    text, pngs = results.demo_report(out / "runs", out, resolve_path("results/reference/paper.csv"))
    print("\n" + text)
    print("plots: " + ", ".join(str(p.relative_to(out)) for p in pngs))
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    print(f"  runs:    {out / 'runs'}")
    print(f"  tables:  {out / 'tables.md'}")
    print(f"  summary: {out / 'summary.csv'}")
    print(f"  plots:   {out / 'plots'}")
    return status
