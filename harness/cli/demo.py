"""``run_all.py demo``: the whole pipeline on a fresh machine, in about a minute, on the CPU.

Writes synthetic data in the official formats, trains every run of ``experiments/smoke.yaml``
in this process (the same ``launch.TrainJob`` every executor runs, one after another, so each
run's epochs print here as they happen), builds the tables and plots from the records, and
says where everything is. It keeps its runs and outputs under ``results/demo/`` so it never
mixes with real results; running it again skips the finished runs.
"""
from __future__ import annotations

import argparse
import time

from harness import jobs, launch, matrix, results
from harness.config import resolve_path
from harness.data.synthetic import write_synthetic

HELP = """\
Run the pipeline end to end on synthetic data (no downloads, no GPU): write small datasets in
the official file formats, train the 6 runs of experiments/smoke.yaml (every backbone x {full
fine-tuning, Point-PEFT}, 5 epochs of 6 steps on 128-point clouds) one after another in this
process, printing each run's epochs as they finish, then collect the result records into
tables and plots. Outputs go to results/demo/ (runs/, tables.md, summary.csv, plots/). The
numbers are pipeline checks, not reproductions.

Measured: about 55 s of CPU time in all, on one thread, so about a minute of wall time on a
quiet machine (more while other work shares the cores). A second run skips the finished runs."""

SYNTH = {"num_classes": 5, "train_per_class": 16, "test_per_class": 8, "seed": 0}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic data -> smoke matrix -> tables and plots, on the CPU (about a minute)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="experiments/smoke.yaml", help="matrix to run (default smoke)")
    p.add_argument("--out", default="results/demo", metavar="DIR", help="outputs (default results/demo)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads (default 1: these tiny models run no faster on more)")
    p.set_defaults(func=run)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def run(args) -> int:
    import torch

    start = time.perf_counter()
    torch.set_num_threads(max(1, args.threads))
    out = resolve_path(args.out)
    specs = matrix.expand(resolve_path(args.experiment), runs_dir=out / "runs")
    wrote = False
    for root, dataset in sorted({(s.config["data"]["root"], s.config["data"]["dataset"]) for s in specs}):
        path = resolve_path(root)
        if not path.is_dir():
            write_synthetic(dataset, path, **SYNTH)
            print(f"wrote synthetic {dataset} to {path}")
            wrote = True
    if wrote:  # run ids carry the data's fingerprint: take it from the files just written
        specs = matrix.expand(resolve_path(args.experiment), runs_dir=out / "runs")
    states = matrix.run_states(specs, jobs.scheduler_states)
    todo = [s for s, st in zip(specs, states) if st.needs_submission]
    print(f"demo: {len(specs)} runs in {args.experiment}, {len(specs) - len(todo)} already done, "
          f"{len(todo)} to train here, one after another; run folders in {out / 'runs'}", flush=True)
    failed = []
    for i, spec in enumerate(todo, 1):
        cell = ", ".join(f"{k} {v}" for k, v in spec.cell.items())
        print(f"\n[run {i}/{len(todo)}, {time.perf_counter() - start:.0f} s] {cell}", flush=True)
        t0 = time.perf_counter()
        try:
            launch.TrainJob()(spec.as_job())
        except Exception as err:  # noqa: BLE001 - recorded in the run's result.json; reported below
            failed.append(spec.run_id)
            print(f"[run {i}/{len(todo)}] FAILED: {_one_line(err)}", flush=True)
            continue
        print(f"[run {i}/{len(todo)}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\ntraining finished at {time.perf_counter() - start:.0f} s; writing tables and plots", flush=True)
    text, pngs = results.demo_report(out / "runs", out, resolve_path("results/reference/paper.csv"))
    print("\n" + text)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s "
          f"({len(todo) - len(failed)} trained, {len(specs) - len(todo)} skipped as done, {len(failed)} failed)")
    print(f"  runs:    {out / 'runs'} (each: metrics.csv per epoch, result.json)")
    print(f"  tables:  {out / 'tables.md'}")
    print(f"  summary: {out / 'summary.csv'}")
    print("  plots:   " + ", ".join(str(p.relative_to(out)) for p in pngs))
    for run_id in failed:
        print(f"failed: {run_id} (details in {out / 'runs' / run_id / 'result.json'})")
    return 1 if failed else 0
