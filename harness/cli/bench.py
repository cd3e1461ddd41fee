"""``run_all.py bench``: speed and memory of the ops, models and tooling, against the targets."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from harness.bench.common import DEFAULT_PARTS, PARTS, BenchSetupError

ROOT = Path(__file__).resolve().parents[2]

HELP = """\
Measure how fast and how light the project is, and score it against its targets
(pass / fail / not-measured, with the measured value or ratio):

  ops      FPS 2048->128 and 8192->1024, kNN 32 of 2048 for 128 centers (batch 32): ours vs
           fpsample / torch_cluster / pytorch3d (CPU) or pointnet2_ops / knn_cuda (CUDA);
           libraries that are not installed are skipped with a note
  models   training and eval samples/s, CPU time and peak memory of every registered backbone x
           method (ScanObjectNN-family geometry, batch 32; on CUDA also bf16), one fresh process
           each; on the CPU peak memory twice: RSS (what the process holds, the C allocator's
           kept heap included) and live tensors of one profiled step (what a GPU's peak
           counts); Point-PEFT also with each memory lever switched off, and in a full CPU
           run full and Point-PEFT also on 4 KiB pages (huge pages off); on the CPU beside the
           official code's reference figures (results/reference/official_cpu_speed.csv; the
           ratio only on the CPU they name and their thread count: the file names its CPU
           without family / model / vector ISA, which a run names, so no ratio today)
  tooling  expand + dry-run submit of a 1,000-run matrix; status of 1,000 SLURM runs; tables
           from 100,000 result records
  epoch    (--epoch) a real training epoch of PB_T50_RS size (11,416 clouds of 2,048 points,
           --epoch-samples to change) through loader, FPS/subset, augmentation, forward,
           backward, AdamW: full and Point-PEFT per backbone; on CUDA fp32/bf16 x compile off/on
  scaling  (--scaling) training-step time and peak memory as points grow (1k-8k, batch 8) and
           as batch grows (8-64): table, fitted growth exponents and a log-log PNG

A plain run measures ops, models and tooling; writes OUT/<device>-<date>.json and .md
(-epoch / -scaling / -quick in the name for those runs; .png beside them for the scaling plot), prints the
tables, and replaces the README block between <!-- bench:<device>:start --> and
<!-- bench:<device>:end --> (skipped with a note where the markers are absent). Timings are
only meaningful on an otherwise idle machine; the load average at start is recorded. While it
runs, OUT/<name>.partial.json holds the cases finished so far (kept if the run is stopped).
--merge combines the JSON reports of separate runs (say, one per part or backbone on a GPU
node) into one report with its targets scored over all their cases; --readme to put it in
the README.

examples:
  python run_all.py bench --device cpu --threads 2 --method full,point_peft   # the README's CPU block (~25 min, idle machine)
  python run_all.py bench --quick --no-readme        # smoke run (a few minutes on 2 CPU cores)
  python run_all.py bench --device cpu --only ops,tooling
  python run_all.py bench --scaling --quick          # cost curves, CI-sized
  python run_all.py bench --device cuda --epoch      # the GPU epoch targets
  python run_all.py bench --device cuda --epoch --precision bf16 --compile off --out /tmp/e
  python run_all.py bench --device cuda --only ops,models --out /tmp/m
  python run_all.py bench --merge /tmp/m/cuda-*.json /tmp/e/cuda-*-epoch.json --readme"""


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {bad or text!r}; valid: {', '.join(PARTS)}")
    return parts


def _names(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _choices(valid: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = _names(text)
        bad = [n for n in names if n not in valid]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown value(s) {bad or text!r}; valid: {', '.join(valid)}")
        return names
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed / memory bench of ops, models and tooling vs the targets",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where to measure (default: cuda when available, else cpu)")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats, model batch 4 with 1 warm-up + 2 timed steps on the CPU (CI smoke run)")
    p.add_argument("--only", type=_parts, default=None, metavar="PARTS",
                   help=f"comma-separated parts to run, of {','.join(PARTS)} (default {','.join(DEFAULT_PARTS)})")
    p.add_argument("--epoch", action="store_true", help="add the epoch part (alone unless --only names others)")
    p.add_argument("--epoch-samples", type=int, default=None, metavar="N",
                   help="clouds in the epoch part's epoch (default 11416, PB_T50_RS train; >= 32)")
    p.add_argument("--scaling", action="store_true", help="add the scaling part (alone unless --only names others)")
    p.add_argument("--backbone", type=_names, default=None, metavar="NAMES",
                   help="models part: only these backbones (comma-separated; default all registered)")
    p.add_argument("--method", type=_names, default=None, metavar="NAMES",
                   help="models part: only these methods (comma-separated; default all registered)")
    p.add_argument("--precision", type=_choices(("fp32", "bf16")), default=None, metavar="LIST",
                   help="CUDA models and epoch parts: only these precisions, of fp32,bf16 (default both; "
                        "the CPU runs fp32)")
    p.add_argument("--compile", type=_choices(("off", "on")), default=None, metavar="LIST",
                   help="CUDA epoch part: torch.compile off, on or off,on (default both; the CPU runs off)")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                   help="measure nothing: merge these reports of separate runs (same code, machine and "
                        "mode; each case once) into one, rebuild its targets and write it like a run")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads for every measurement (default: torch's default, the core count)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench", metavar="DIR",
                   help="where the JSON and markdown go (default results/bench)")
    readme = p.add_mutually_exclusive_group()
    readme.add_argument("--readme", nargs="?", type=Path, const=ROOT / "README.md", default=None, metavar="PATH",
                        help="update the bench block of this README (default README.md; on by default "
                             "except with --quick)")
    readme.add_argument("--no-readme", action="store_true", help="leave the README alone")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from harness.bench import render_markdown, run_bench, write_outputs
    from harness.cli import UserError
    from models.classifier import BACKBONES, METHODS, choose

    if args.merge:
        return _merge(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and ("bf16" in (args.precision or ()) or "on" in (args.compile or ())):
        raise UserError("--precision bf16 and --compile on are CUDA cases; the CPU bench runs fp32 without "
                        "torch.compile (use --device cuda on a GPU)")
    for kind, names, valid in (("backbone", args.backbone, BACKBONES), ("method", args.method, METHODS)):
        for name in names or []:
            choose(kind, name, valid)
    only = list(args.only or ([] if args.epoch or args.scaling else DEFAULT_PARTS))
    only += [p for p, asked in (("epoch", args.epoch), ("scaling", args.scaling)) if asked and p not in only]
    if args.epoch_samples is not None and args.epoch_samples < 32:
        raise UserError(f"--epoch-samples must be at least one batch (32), got {args.epoch_samples}")
    if args.no_readme:
        readme = None
    else:  # the README block shows the default parts only
        readme = args.readme or (None if args.quick or set(only) != set(DEFAULT_PARTS) else ROOT / "README.md")
    command = None
    if sys.argv[1:2] == ["bench"]:  # run as `run_all.py bench ...`: recorded in the report
        command = "python run_all.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    log(f"bench on {device} ({'quick' if args.quick else 'full'} mode): {', '.join(only)}")
    load, cores = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), os.cpu_count() or 1
    if load > 0.5 * cores:
        log(f"note: load average {load:.2f} on {cores} cores: other work is running, timings will be noisy")
    from harness.bench.report import partial_path, to_json
    from harness.results import write_bytes_atomic

    partial = []   # the partial report's path, once written

    def save_partial(snapshot: dict) -> None:
        path = partial_path(args.out, snapshot)
        try:
            if not partial:
                if path.exists():   # a stopped run's cases: keep them beside this run's
                    kept = path.with_name(f"{path.name.removesuffix('.json')}-"
                                          f"{time.strftime('%Y%m%dT%H%M%S', time.localtime(path.stat().st_mtime))}.json")
                    path.replace(kept)
                    log(f"note: moved the earlier stopped run's partial report to {kept}")
                log(f"partial results go to {path} as cases finish (removed when the run completes)")
                partial.append(path)
            write_bytes_atomic(path, to_json(snapshot))
        except OSError as err:   # the measurement matters more than its backup copy
            log(f"warning: could not save the partial report {path} ({err}); the run goes on")

    try:
        report = run_bench(device, args.quick, only, log=log, backbones=args.backbone,
                           methods=args.method, command=command, threads=args.threads,
                           epoch_samples=args.epoch_samples, precisions=args.precision,
                           compiles=None if args.compile is None else [c == "on" for c in args.compile],
                           save_partial=save_partial)
    except BenchSetupError as err:
        raise UserError(str(err)) from None
    rc = _write(report, args.out, readme)
    for path in partial:
        path.unlink(missing_ok=True)
    return rc


# Options that choose what to measure: meaningless with --merge, which measures nothing.
MEASURE_OPTIONS = ("device", "quick", "only", "epoch", "epoch_samples", "scaling", "backbone", "method",
                   "precision", "compile", "threads")


def _merge(args) -> int:
    """``bench --merge A.json B.json ...``: one report from separate runs, written like a run's."""
    import json

    from harness.bench.report import merge_reports, output_paths
    from harness.cli import UserError

    given = [f"--{name.replace('_', '-')}" for name in MEASURE_OPTIONS if getattr(args, name) not in (None, False)]
    if given:
        raise UserError(f"--merge measures nothing, so {', '.join(given)} would be ignored; drop "
                        f"{'it' if len(given) == 1 else 'them'}")
    reports = []
    for path in args.merge:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise UserError(f"--merge: {path} does not exist (expected a bench report .json)") from None
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise UserError(f"--merge: cannot read {path} as a bench report JSON ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from None
    try:
        report = merge_reports(reports, [str(p) for p in args.merge])
        inputs = {Path(p).resolve() for p in args.merge}
        clash = [str(p) for p in output_paths(Path(args.out), report) if p.resolve() in inputs]
        if clash:
            raise ValueError(f"the merged report would overwrite its input {clash[0]}; choose another --out")
        return _write(report, args.out, None if args.no_readme else args.readme, merged=True)
    except (ValueError, BenchSetupError) as err:
        raise UserError(f"--merge: {err}") from None
    except (TypeError, KeyError, AttributeError) as err:   # a field of an unexpected type or missing
        raise UserError(f"--merge: a report has an unexpected shape ({type(err).__name__}: {err}); "
                        "expected reports written by `run_all.py bench`") from None


def _write(report: dict, out: Path, readme, merged: bool = False) -> int:
    from harness.bench import render_markdown, write_outputs

    if merged and report.get("partial"):
        print("note: merged from partial reports: the cases their runs did not reach are missing",
              file=sys.stderr)
    done = write_outputs(report, out, readme)

    print(render_markdown(report))
    print(f"wrote {done['json']}")
    print(f"wrote {done['markdown']}")
    if done.get("plot"):
        print(f"wrote {done['plot']}")
    print(done["readme_note"])
    counts = {s: sum(t["status"] == s for t in report["targets"]) for s in ("pass", "fail", "not-measured")}
    print(f"targets: {counts['pass']} pass, {counts['fail']} fail, {counts['not-measured']} not measured "
          f"(bench took {report['wall_s']:.0f} s)")
    return 0
