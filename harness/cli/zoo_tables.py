"""``run_all.py zoo-tables``: the zoo experiment's records -> zoo.md, plots, README block."""
from __future__ import annotations

import argparse
from pathlib import Path

from harness import results, zoo_tables

ROOT = Path(__file__).resolve().parents[2]

HELP = f"""\
Collect the result records of one zoo experiment (experiments/zoo.yaml, or zoo_smoke for the
synthetic CI version) into per-dataset tables: each method's row with trainable parameters, the
published number (results/reference/zoo.csv, official variant only), the honest and the legacy
selection (mean ± std, n), the paired difference to full fine-tuning with its Student-t 95%
interval, s/epoch and peak memory; and a plot per dataset of accuracy vs trainable parameters.
Writes OUT/zoo.md and OUT/plots/zoo_<dataset>[_synthetic].png; with --readme also the README block
between {zoo_tables.README_MARKERS[0]} and {zoo_tables.README_MARKERS[1]}. Everything is computed
before anything is written.

examples:
  python run_all.py zoo-tables --readme
  python run_all.py zoo-tables --experiment zoo_smoke --out results/zoo_smoke"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo-tables", help="the zoo tables (methods beside full fine-tuning) and plots",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=ROOT / "results" / "runs", metavar="DIR",
                   help="folder of run folders (default results/runs)")
    p.add_argument("--experiment", default="zoo", help="experiment name in the records (default zoo)")
    p.add_argument("--out", type=Path, default=ROOT / "results", metavar="DIR",
                   help="where zoo.md and plots/ go (default results)")
    p.add_argument("--reference", type=Path, default=zoo_tables.REFERENCE, metavar="CSV",
                   help="published numbers (default results/reference/zoo.csv)")
    p.add_argument("--readme", type=Path, nargs="?", const=ROOT / "README.md", default=None, metavar="PATH",
                   help="also replace the zoo block of this README (default README.md when given without a "
                        "path); off by default, so regenerating tables never edits a tracked file")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    p.set_defaults(func=run)


def run(args) -> int:
    outputs = zoo_tables.build_outputs(args.runs, args.out, args.experiment, args.reference,
                                       readme=args.readme, plots=args.plots)
    written = results.write_outputs(outputs)
    for path in written:
        print(f"wrote {path}")
    print(f"zoo tables ({args.experiment}): {len(written)} files written, {len(outputs) - len(written)} unchanged")
    return 0
