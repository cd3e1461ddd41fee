"""``run_all.py submit`` and ``run_all.py status``: run an experiment matrix, idempotently."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tabulate import tabulate

from harness import launch, matrix, runlock
from harness.config import resolve_path
from harness.results import write_bytes_atomic

SUBMIT_HELP = """\
Expand an experiment file (experiments/*.yaml) into runs and launch the ones that need it:
finished runs are skipped, runs still pending or running in the scheduler are skipped, runs with
a checkpoint resume from it, failed and new runs are (re)submitted. Running it again after a
failure or a preemption is therefore always safe.

executors (one code path, through submitit):
  slurm   one SLURM job array; resources from a cluster profile (--profile slurm/profiles/*.yaml)
  local   local processes, --parallel at a time (the command waits for them)
  debug   in this process, one after another (for debugging)

examples:
  python run_all.py submit experiments/paper.yaml --executor slurm --profile slurm/profiles/example-cluster.yaml --dry-run
  python run_all.py submit experiments/paper.yaml --executor slurm --profile my.yaml --only backbone=point_mae,dataset=scanobjectnn_pb_t50_rs --seeds 0-4
  python run_all.py submit experiments/smoke.yaml --executor local"""

STATUS_HELP = """\
One row per run of an experiment: done, failed (with the first line of the error), running,
pending, resumable (has a checkpoint, no live job) or not started, from the run records and the
scheduler (sacct for SLURM jobs)."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment file, e.g. experiments/paper.yaml")
    p.add_argument("--only", action="append", metavar="AXIS=VALUE,...",
                   help="keep only cells with these axis values (repeatable), e.g. backbone=point_mae,seed=0")
    p.add_argument("--seeds", metavar="RANGE", help="keep only these seeds, e.g. 0-4 or 0,2")
    p.add_argument("--runs-dir", metavar="DIR", help="where run folders live (default: the config's output.runs_dir)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="launch an experiment matrix (slurm | local | debug), idempotently",
                       description=SUBMIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--executor", choices=launch.EXECUTORS, default="local", help="where jobs run (default local)")
    p.add_argument("--profile", metavar="YAML", help="cluster profile for --executor slurm (partition, GPUs, time ...)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and (slurm) the sbatch script; submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the submitted jobs and print the final status")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="local executor: runs at a time (default 1)")
    p.add_argument("--logs", metavar="DIR", help="submitit log folder (default results/submitit/<experiment>)")
    p.set_defaults(func=run_submit)
    s = sub.add_parser("status", help="table of an experiment's runs and their states",
                       description=STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(s)
    s.set_defaults(func=run_status)


def _specs(args):
    filters = matrix.parse_filters(args.only, args.seeds)
    return matrix.expand(args.experiment, filters, runs_dir=args.runs_dir)


def _table(specs, states, actions=None) -> str:
    rows = []
    for i, (spec, st) in enumerate(zip(specs, states)):
        row = {"run": spec.run_id, **{k: v for k, v in spec.cell.items()}, "state": st.state, "detail": st.detail}
        if actions:
            row["action"] = actions[i]
        rows.append(row)
    return tabulate(rows, headers="keys", tablefmt="github")


def _action(st: matrix.RunState) -> str:
    return {"done": "skip (done)", "running": "skip (running)", "pending": "skip (pending)",
            "failed": "retry", "resumable": "resume", "not started": "submit"}[st.state]


def run_status(args) -> int:
    specs = _specs(args)
    states = [matrix.run_state(s, launch.scheduler_state) for s in specs]
    print(_table(specs, states))
    counts = {}
    for st in states:
        counts[st.state] = counts.get(st.state, 0) + 1
    print(f"\n{len(specs)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 1 if counts.get("failed") else 0


def _record_jobs(kind, specs, jobs, folder) -> None:
    for spec, job in zip(specs, jobs):
        info = launch.job_info(kind, job, folder)
        write_bytes_atomic(matrix.run_path(spec) / "job.json", json.dumps(info, indent=1).encode())


def _wait(jobs) -> list[str]:
    errors = []
    for job in jobs:
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - reported per run; the record has the details
            errors.append(f"job {job.job_id}: {str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}")
    return errors


def run_submit(args) -> int:
    if args.parallel < 1:
        raise launch.LaunchError(f"--parallel must be at least 1, got {args.parallel}")
    specs = _specs(args)
    states = [matrix.run_state(s, launch.scheduler_state) for s in specs]
    owners = [runlock.holder(matrix.run_path(s)) if st.needs_submission else None for s, st in zip(specs, states)]
    todo = [s for s, st, owner in zip(specs, states, owners) if st.needs_submission and owner is None]
    actions = [f"skip (locked by pid {owner['pid']})" if owner else _action(st) for st, owner in zip(states, owners)]
    print(_table(specs, states, actions))
    print(f"\n{len(specs)} runs, {len(todo)} to submit ({args.executor})")
    name = specs[0].experiment if specs else Path(args.experiment).stem
    folder = Path(args.logs) if args.logs else resolve_path("results/submitit") / name
    profile = launch.load_profile(args.profile) if args.profile else None
    if args.executor == "slurm":
        if profile is None:
            raise launch.LaunchError("--executor slurm needs --profile (a cluster profile YAML)")
        launch.check_job_name(name)
    batches = launch.chunks(todo, args.parallel if args.executor == "local"
                            else launch.array_size(args.executor, profile) if todo else None)
    if args.dry_run:
        if args.executor == "slurm" and todo:
            sizes = [len(b) for b in batches]
            print(f"\n{len(batches)} job array(s) of {', '.join(map(str, sizes))} job(s); sbatch script of the first:\n")
            print(launch.sbatch_script(profile, folder, sizes[0], job_name=name))
        return 0
    if not todo:
        return 0
    executor = launch.make_executor(args.executor, folder, profile, job_name=name)
    errors = []
    for batch in batches:
        jobs = launch.submit([s.as_job() for s in batch], executor)
        _record_jobs(args.executor, batch, jobs, folder)
        print("submitted: " + ", ".join(f"{s.run_id} -> job {j.job_id}" for s, j in zip(batch, jobs)), flush=True)
        if args.wait or args.executor != "slurm":
            errors += _wait(jobs)
    if args.wait or args.executor != "slurm":
        print()
        return run_status(args) or (1 if errors else 0)
    return 0
