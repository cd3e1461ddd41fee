"""``run_all.py tables``: result records -> tables.md, summary.csv, README block, plots."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness import results

ROOT = Path(__file__).resolve().parents[2]

HELP = f"""\
Collect every results/runs/<run_id>/result.json into tables of measured accuracy (mean ± std
over seeds, n runs) beside the paper's numbers (results/reference/paper.csv), and write:
  OUT/tables.md, OUT/summary.csv, OUT/plots/<dataset>.png, and the README block between
  {results.README_START} and {results.README_END} (nothing else in the README changes).
Everything is computed before anything is written: a bad record or a README without markers
is reported (naming the file) and no output changes. Runs on synthetic data get their own
section and are never shown beside the paper's numbers. Eval records of `run_all.py eval`
(results/evals/*.json) get a "Released checkpoints" section: one row per checkpoint file.

selections (which accuracy of a run is reported):
  last       last epoch (no model selection)
  best_val   test accuracy at the best validation epoch (null where there is no val split)
  best_test  best epoch on the test set: what the official code reports (default)
  vote       with voting (test-time augmentation), where it was run

examples:
  python run_all.py tables
  python run_all.py tables --selection last --no-readme --no-plots"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tables", help="result tables, summary CSV, README block and plots from run records",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=ROOT / "results" / "runs", metavar="DIR",
                   help="folder of run folders (default results/runs)")
    p.add_argument("--evals", type=Path, default=ROOT / "results" / "evals", metavar="DIR",
                   help="folder of eval records of run_all.py eval (default results/evals)")
    p.add_argument("--selection", choices=list(results.SELECTIONS), default="best_test",
                   help="which accuracy of each run to report (default best_test)")
    p.add_argument("--out", type=Path, default=ROOT / "results", metavar="DIR",
                   help="where tables.md, summary.csv and plots/ go (default results)")
    p.add_argument("--reference", type=Path, default=ROOT / "results" / "reference" / "paper.csv",
                   metavar="CSV", help="the paper's numbers (default results/reference/paper.csv)")
    readme = p.add_mutually_exclusive_group()
    readme.add_argument("--readme", type=Path, default=ROOT / "README.md", metavar="PATH",
                        help="README whose marked block gets the tables (default README.md)")
    readme.add_argument("--no-readme", dest="readme", action="store_const", const=None,
                        help="leave the README alone")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    p.set_defaults(func=run)


def run(args) -> int:
    start = time.perf_counter()
    outputs = results.build_outputs(args.runs, args.out, args.selection, args.reference,
                                    readme=args.readme, plots=args.plots, evals_dir=args.evals)
    written = results.write_outputs(outputs)
    unchanged = len(outputs) - len(written)
    for path in written:
        print(f"wrote {path}")
    print(f"tables ({args.selection}): {len(written)} files written, {unchanged} unchanged "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
