"""`run_all.py data`: write synthetic datasets, check dataset folders before training."""
from __future__ import annotations

import argparse

from harness.data import DATASET_NAMES
from harness.data.registry import DATASETS

_LAYOUTS = "\n".join(f"  {n:24s} root = {DATASETS[n].layout}" for n in DATASET_NAMES)

DATA_HELP = f"""\
Dataset utilities. Datasets and what their root folder must hold:
{_LAYOUTS}
"""

SYNTH_HELP = """\
Write a small synthetic dataset in the exact official file layout (same folder and file
names, h5 keys, txt format), so the real loaders and the whole pipeline can run without the
real data. Classes are parametric shape families (sphere, cube, cylinder, ... with aspect
ratios) a small model can learn; everything is drawn from --seed.

ModelNet40 (Point-BERT layout) keeps 10000 points per txt file; its .dat cache is built on
first load (FPS, about 0.1 s per shape), so keep --train-per-class small or use
--num-classes. Counts will not match the official ones: check with
--allow-count-mismatch or --no-expect-official-counts."""

CHECK_HELP = """\
Check a dataset folder against what the official loaders expect: files present, h5 keys,
shapes and dtypes, labels in range, the ModelNet40 lists, shape files and any .dat cache
(Point-BERT's two ready 8192-point caches alone are enough: the project ships the class names);
and the sample counts against the official release (PB_T50_RS 11416/2882, OBJ_BG and
OBJ_ONLY 2309/581, ModelNet40 9843/2468, modelnet40_h5 9840/2468). Prints per-class counts,
the test split's baselines (chance and majority-class accuracy: what a trained model must beat)
and one line per problem; exits 1 on any problem, 0 when the folder is ready."""


def register(subparsers) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = subparsers.add_parser("data", help="create synthetic datasets, check dataset folders",
                                   description=DATA_HELP, formatter_class=raw)
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION", required=True)

    synth = actions.add_parser("synth", help="write a small synthetic dataset (official layout)",
                               description=SYNTH_HELP, formatter_class=raw)
    synth.add_argument("--dataset", required=True, choices=DATASET_NAMES, metavar="NAME",
                       help="one of: " + ", ".join(DATASET_NAMES))
    synth.add_argument("--out", required=True, metavar="DIR",
                       help="root folder to write (files already there are overwritten)")
    synth.add_argument("--train-per-class", type=int, default=8, metavar="N",
                       help="train samples per class (default 8)")
    synth.add_argument("--test-per-class", type=int, default=4, metavar="N",
                       help="test samples per class (default 4)")
    synth.add_argument("--num-classes", type=int, default=None, metavar="K",
                       help="give samples to the first K classes only (default all); the "
                            "class-name lists always hold every class")
    synth.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    synth.set_defaults(func=run_synth)

    check = actions.add_parser("check", help="validate a dataset folder before training",
                               description=CHECK_HELP, formatter_class=raw)
    check.add_argument("--dataset", required=True, choices=DATASET_NAMES, metavar="NAME",
                       help="one of: " + ", ".join(DATASET_NAMES))
    check.add_argument("--root", required=True, metavar="DIR", help="the dataset's root folder")
    check.add_argument("--expect-official-counts", action=argparse.BooleanOptionalAction,
                       default=True, help="compare sample counts with the official release "
                                          "(default on)")
    check.add_argument("--allow-count-mismatch", action="store_true",
                       help="report a count different from the official one as a warning, "
                            "not an error")
    check.add_argument("--deep", action="store_true",
                       help="modelnet40: also parse every <class>/<id>.txt (slow on the full set)")
    check.set_defaults(func=run_check)


def run_synth(args: argparse.Namespace) -> int:
    from harness.data import build_dataset
    from harness.data.synthetic import write_synthetic

    root = write_synthetic(args.dataset, args.out, args.train_per_class, args.test_per_class,
                           args.seed, args.num_classes)
    if args.dataset == "modelnet40":
        print(f"wrote {args.dataset} to {root} (the .dat caches are built on first load)")
    else:
        sizes = {s: len(build_dataset(args.dataset, root, s)) for s in ("train", "test")}
        print(f"wrote {args.dataset} to {root}: {sizes['train']} train, {sizes['test']} test")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from harness.data.check import check_dataset, format_report

    report = check_dataset(args.dataset, args.root, args.expect_official_counts,
                           args.allow_count_mismatch, args.deep)
    print(format_report(report))
    return 0 if report.ok else 1
