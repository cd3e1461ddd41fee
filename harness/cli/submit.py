"""``run_all.py submit`` and ``run_all.py status``: run an experiment matrix, idempotently."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tabulate import tabulate

from harness import jobs, launch, matrix, runlock
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
pending, resumable (has a checkpoint, no live job), not started, or bad record (an unreadable
result.json, named), from the run records and the scheduler (for SLURM: one squeue and batched
sacct calls for all jobs). A job that ended without its run writing a record counts as failed:
its scheduler state, the path of its submitit log and the log's last lines are shown.
Job logs are in results/submitit/<experiment>/ (or submit's --logs). Exit status 1 when a run
failed or a file could not be read."""

PREFLIGHT_HELP = ("skip the check that every run's data folder and checkpoint exist and are readable "
                  "here (for clusters whose paths differ from this machine's)")


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
    p.add_argument("--no-preflight", dest="preflight", action="store_false", help=PREFLIGHT_HELP)
    p.set_defaults(func=run_submit)
    s = sub.add_parser("status", help="table of an experiment's runs and their states",
                       description=STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(s)
    s.add_argument("--logs", metavar="DIR", help="submitit log folder (default results/submitit/<experiment>)")
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
            "failed": "retry", "resumable": "resume", "not started": "submit",
            "bad record": "skip (fix or delete the file)"}[st.state]


def _log_folder(args, specs) -> Path:
    name = specs[0].experiment if specs else Path(args.experiment).stem
    return Path(args.logs) if getattr(args, "logs", None) else resolve_path("results/submitit") / name


def run_status(args) -> int:
    specs = _specs(args)
    states = matrix.run_states(specs, jobs.scheduler_states)
    print(_table(specs, states))
    counts = {}
    for st in states:
        counts[st.state] = counts.get(st.state, 0) + 1
    for spec, st in zip(specs, states):
        if st.log is not None:
            print(f"\n{spec.run_id}: job {st.job['job_id']} ended without a record; log {st.log}"
                  + ("".join(f"\n    {line}" for line in st.log_tail) if st.log_tail else " (empty or missing)"))
    problems = [p for st in states for p in st.problems]
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    print(f"\n{len(specs)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    print(f"job logs: {_log_folder(args, specs)}/")
    return 1 if (counts.get("failed") or problems) else 0


def preflight(specs) -> list[str]:
    """One line per data folder / checkpoint / memory bank a run needs that is missing or
    unreadable on this machine (each path once)."""
    import os

    missing, seen = [], set()
    for spec in specs:
        cfg = spec.config
        needs = [("data.root", cfg["data"]["root"], True), ("model.pretrained", cfg["model"]["pretrained"], False),
                 ("model.method_options.bank_path", cfg["model"]["method_options"].get("bank_path"), False)]
        for key, value, is_dir in needs:
            if value is None or (key, value) in seen:
                continue
            seen.add((key, value))
            path = resolve_path(value)
            ok = path.is_dir() if is_dir else path.is_file()
            if not ok or not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
                what = "folder" if is_dir else "file"
                why = "not readable" if ok else f"no such {what}"
                missing.append(f"{key}: {path}: {why} (needed by {spec.run_id})")
    return missing


def _record_jobs(kind, specs, submitted, folder) -> None:
    for spec, job in zip(specs, submitted):
        info = launch.job_info(kind, job, folder)
        info.update(run_id=spec.run_id, setup_id=spec.setup_id, experiment=spec.experiment,
                    backbone=spec.config["model"]["backbone"], method=spec.config["model"]["method"],
                    dataset=spec.config["data"]["dataset"], variant=spec.cell.get("variant", ""),
                    seed=spec.config["train"]["seed"],
                    data_source="synthetic" if spec.config["data"]["synthetic"] else "official")
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
    states = matrix.run_states(specs, jobs.scheduler_states)
    owners = [runlock.holder(matrix.run_path(s)) if st.needs_submission else None for s, st in zip(specs, states)]
    todo = [s for s, st, owner in zip(specs, states, owners) if st.needs_submission and owner is None]
    actions = [f"skip (locked by pid {owner['pid']})" if owner else _action(st) for st, owner in zip(states, owners)]
    print(_table(specs, states, actions))
    print(f"\n{len(specs)} runs, {len(todo)} to submit ({args.executor})")
    name = specs[0].experiment if specs else Path(args.experiment).stem
    folder = _log_folder(args, specs)
    profile = launch.load_profile(args.profile) if args.profile else None
    if args.executor == "slurm":
        if profile is None:
            raise launch.LaunchError("--executor slurm needs --profile (a cluster profile YAML)")
        launch.check_job_name(name)
    batches = launch.chunks(todo, args.parallel if args.executor == "local"
                            else launch.array_size(args.executor, profile) if todo else None)
    if todo and getattr(args, "preflight", True):
        missing = preflight(todo)
        kind = "warning" if args.dry_run else "error"
        for line in missing:
            print(f"{kind}: {line}", file=sys.stderr)
        if missing and not args.dry_run:
            print(f"error: {len(missing)} path(s) missing or unreadable; nothing submitted "
                  "(--no-preflight if the cluster's paths differ from this machine's)", file=sys.stderr)
            return 2
    if args.dry_run:
        if args.executor == "slurm" and todo:
            sizes = [len(b) for b in batches]
            print(f"\n{len(batches)} job array(s) of {', '.join(map(str, sizes))} job(s); sbatch script of the first:\n")
            print(launch.sbatch_script(profile, folder, sizes[0], job_name=name))
        return 0
    if not todo:
        return 0
    print(f"job logs: {folder}/", flush=True)
    executor = launch.make_executor(args.executor, folder, profile, job_name=name)
    errors = []
    for batch in batches:
        submitted = launch.submit([s.as_job() for s in batch], executor)
        _record_jobs(args.executor, batch, submitted, folder)
        print("submitted: " + ", ".join(f"{s.run_id} -> job {j.job_id}" for s, j in zip(batch, submitted)),
              flush=True)
        if args.wait or args.executor != "slurm":
            errors += _wait(submitted)
    if args.wait or args.executor != "slurm":
        print()
        return run_status(args) or (1 if errors else 0)
    return 0
