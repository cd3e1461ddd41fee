"""``run_all.py bench``: speed and memory of the ops, models and tooling, against the targets."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from harness.bench.common import PARTS, BenchSetupError

ROOT = Path(__file__).resolve().parents[2]

HELP = """\
Measure how fast and how light the project is, and score it against the project's targets
(listed in the report's Targets table with their thresholds):

  ops      FPS 2048->128 and 8192->1024, kNN 32 of 2048 for 128 centers (batch 32): ours vs
           fpsample / torch_cluster / pytorch3d (CPU) or pointnet2_ops / knn_cuda (CUDA);
           libraries that are not installed are skipped with a note
  models   training and eval samples/s and peak memory of every registered backbone x method
           (ScanObjectNN-family geometry, batch 32; on CUDA also bf16), one fresh process each
  tooling  expand + dry-run submit of a 1,000-run matrix; status of 1,000 SLURM runs; tables
           from 100,000 result records

Writes OUT/<device>-<date>.json and .md (OUT/<device>-<date>-quick.* in --quick mode), prints
the tables, and replaces the README block between <!-- bench:<device>:start --> and
<!-- bench:<device>:end --> (skipped with a note where the markers are absent). Timings are
only meaningful on an otherwise idle machine; the load average at start is recorded.

examples:
  python run_all.py bench                      # everything, on cuda when available
  python run_all.py bench --quick --no-readme  # smoke run (< 2 minutes on 2 CPU cores)
  python run_all.py bench --device cpu --only ops,tooling"""


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {bad or text!r}; valid: {', '.join(PARTS)}")
    return parts


def _names(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed / memory bench of ops, models and tooling vs the targets",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where to measure (default: cuda when available, else cpu)")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats, model batch 4 with 1 warm-up + 2 timed steps on the CPU (CI smoke run)")
    p.add_argument("--only", type=_parts, default=list(PARTS), metavar="PARTS",
                   help=f"comma-separated parts to run (default all: {','.join(PARTS)})")
    p.add_argument("--backbone", type=_names, default=None, metavar="NAMES",
                   help="models part: only these backbones (comma-separated; default all registered)")
    p.add_argument("--method", type=_names, default=None, metavar="NAMES",
                   help="models part: only these methods (comma-separated; default all registered)")
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

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for kind, names, valid in (("backbone", args.backbone, BACKBONES), ("method", args.method, METHODS)):
        for name in names or []:
            choose(kind, name, valid)
    if args.no_readme:
        readme = None
    else:
        readme = args.readme or (None if args.quick else ROOT / "README.md")
    command = None
    if sys.argv[1:2] == ["bench"]:  # run as `run_all.py bench ...`: recorded in the report
        command = "python run_all.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    log(f"bench on {device} ({'quick' if args.quick else 'full'} mode): {', '.join(args.only)}")
    load, cores = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), os.cpu_count() or 1
    if load > 0.5 * cores:
        log(f"note: load average {load:.2f} on {cores} cores: other work is running, timings will be noisy")
    try:
        report = run_bench(device, args.quick, args.only, log=log, backbones=args.backbone,
                           methods=args.method, command=command, threads=args.threads)
    except BenchSetupError as err:
        raise UserError(str(err)) from None
    done = write_outputs(report, args.out, readme)
    print(render_markdown(report))
    print(f"wrote {done['json']}")
    print(f"wrote {done['markdown']}")
    print(done["readme_note"])
    counts = {s: sum(t["status"] == s for t in report["targets"]) for s in ("pass", "fail", "not-measured")}
    print(f"targets: {counts['pass']} pass, {counts['fail']} fail, {counts['not-measured']} not measured "
          f"(bench took {report['wall_s']:.0f} s)")
    return 0
