"""``run_all.py tables``: result records -> tables.md, summary.csv, paired.csv, plots (README on request)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness import jobs, results

ROOT = Path(__file__).resolve().parents[2]

HELP = f"""\
Collect every results/runs/<run_id>/result.json into tables and write OUT/tables.md,
OUT/summary.csv (one row per setup), OUT/paired.csv and OUT/plots/<dataset>.png. Eval records
of `run_all.py eval` (results/evals/*.json) get a "Released checkpoints" section: one row per
checkpoint file, beside the paper's number where the evaluation is comparable.

A row is one setup (the runs of one resolved config, data and weights identified by content,
that differ only in their seed), mean ± std over distinct seeds. Setups that are not comparable
to the paper (synthetic or partial data, random init, fewer epochs, other batch or points ...)
get their own section with the reasons and are never plotted beside the paper's numbers. Both
selections are shown side by side: honest (best validation epoch, else last epoch) and legacy
(best test epoch / vote: what the official code reports). A paired table gives PEFT minus full
fine-tuning per seed with a 95% Student-t interval. Costs: trainable parameters, compute time
summed over resumed segments, seconds per epoch, peak memory.

Run folders whose job ended without writing a record count as failed (the scheduler is asked
once, in batches). A record that cannot be read is named and skipped; the exit status is then 1.
The README block between {results.README_START} and {results.README_END} is written only
with --readme (so regenerating tables leaves tracked files, and later runs' git_dirty, alone).

Later runs are faster: RUNS/.tables-rows.json keeps what the tables took from each record, and
a record whose file is unchanged (same inode, size, modification and change time; records are
replaced, never edited in place) is not parsed again, except one record per setup for its
config. It is rebuilt when the tables code changes; deleting it is always safe. A first run
over 4,096 or more unparsed records parses them in parallel, one process per core (up to 8;
Linux): worker processes, and this one reads a share meanwhile. --no-cache parses every record
in this process and neither reads nor writes the file.

examples:
  python run_all.py tables
  python run_all.py tables --readme --no-plots"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tables", help="result tables, summary CSV and plots from run records (README on request)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=ROOT / "results" / "runs", metavar="DIR",
                   help="folder of run folders (default results/runs)")
    p.add_argument("--evals", type=Path, default=ROOT / "results" / "evals", metavar="DIR",
                   help="folder of eval records of run_all.py eval (default results/evals)")
    p.add_argument("--out", type=Path, default=ROOT / "results", metavar="DIR",
                   help="where tables.md, summary.csv, paired.csv and plots/ go (default results)")
    p.add_argument("--reference", type=Path, default=ROOT / "results" / "reference" / "paper.csv",
                   metavar="CSV", help="the paper's numbers (default results/reference/paper.csv)")
    readme = p.add_mutually_exclusive_group()
    readme.add_argument("--readme", type=Path, nargs="?", const=ROOT / "README.md", default=None, metavar="PATH",
                        help="also replace the marked block of this README (default README.md)")
    readme.add_argument("--no-readme", dest="readme", action="store_const", const=None,
                        help="leave the README alone (the default)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    p.add_argument("--run-plots", action="store_true",
                   help="also plot every run of the non-comparable setups and their learning curves")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="parse every record in this process, and neither read nor write RUNS/.tables-rows.json")
    p.set_defaults(func=run)


def run(args) -> int:
    start = time.perf_counter()
    outputs, t = results.build_outputs(args.runs, args.out, args.reference, readme=args.readme,
                                       plots_=args.plots, run_plots=args.run_plots, ask=jobs.scheduler_states,
                                       evals_dir=args.evals, cache=args.cache)
    written = results.write_outputs(outputs)
    for path in written:
        print(f"wrote {path}")
    for problem in t.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    print(f"tables: {len(t.runs)} done runs in {len(t.setups)} setups, {len(t.failed)} failed; "
          f"{len(written)} files written, {len(outputs) - len(written)} unchanged "
          f"in {time.perf_counter() - start:.1f} s")
    if t.problems:
        print(f"error: {len(t.problems)} file(s) could not be used (named above)", file=sys.stderr)
        return 1
    return 0
