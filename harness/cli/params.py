"""``run_all.py params``: the parameter table, measured beside the paper's figures."""
from __future__ import annotations

import argparse
import json
import sys

from tabulate import tabulate

from harness.catalog import DATASETS, dataset_info
from harness.params import count_by_group, count_params, count_with_grad, paper_trainable_millions
from models.classifier import BACKBONES, METHODS, build_model, choose, default_npoints

HELP = """\
Count the parameters of every backbone x method x dataset model and print them beside the
paper's reported trainable-parameter figure (results/reference/paper.csv).

Columns: total = all parameters; trainable = tensors marked requires_grad; with grad =
trainable elements that actually receive a gradient in one forward/backward (the paper's
convention); paper = the paper's trainable figure in millions ("not reported" if none);
code = where the method's definition comes from on that backbone (official code, a paper row
without official code, our port, inferred) or "not supported" (no counts).

examples:
  python run_all.py params
  python run_all.py params --backbone point_mae --dataset modelnet40 --format json
  python run_all.py params --by-group --format csv"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="parameter table (total / trainable) vs the paper",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", action="append", metavar="NAME",
                   help=f"limit to these backbones (repeat or comma-separate; default all: {', '.join(BACKBONES)})")
    p.add_argument("--method", action="append", metavar="NAME",
                   help=f"limit to these methods (default all: {', '.join(METHODS)})")
    p.add_argument("--dataset", action="append", metavar="NAME",
                   help=f"limit to these datasets (default all: {', '.join(DATASETS)})")
    p.add_argument("--format", choices=["md", "csv", "json"], default="md", help="output format (default md)")
    p.add_argument("--by-group", action="store_true", help="one row per module group instead of per model")
    p.add_argument("--no-grad-check", action="store_true",
                   help="skip the forward/backward that counts tensors receiving a gradient (faster)")
    p.set_defaults(func=run)


def _selection(values: list[str] | None, kind: str, valid) -> list[str]:
    if not values:
        return list(valid)
    names = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return [choose(kind, n, valid) for n in names]


def _rows(args) -> list[dict]:
    paper = paper_trainable_millions()
    rows, cache = [], {}
    for backbone in _selection(args.backbone, "backbone", BACKBONES):
        for method in _selection(args.method, "method", METHODS):
            for dataset in _selection(args.dataset, "dataset", DATASETS):
                info = dataset_info(dataset)
                spec = METHODS[method]
                base = {"backbone": backbone, "method": method, "dataset": dataset}
                code = spec.support_note(backbone) + (" [inferred]" if spec.definition == "inferred" else "")
                if not spec.supports(backbone):
                    if not args.by_group:
                        rows.append({**base, "total": None, "trainable": None, "with_grad": None,
                                     "trainable_M": None, "paper_trainable_M": None, "code": code})
                    continue
                options = spec.dataset_options.get(dataset, {})  # the official config for this dataset
                key = (backbone, method, info.family, info.num_classes, repr(options))
                if key not in cache:
                    model = build_model(backbone, info.num_classes, method=method, family=info.family,
                                        method_options=options)
                    grad = None if args.no_grad_check else count_with_grad(
                        model, default_npoints(backbone, info.family))
                    cache[key] = (count_params(model), count_by_group(model), grad)
                count, groups, grad = cache[key]
                if args.by_group:
                    rows += [{**base, "group": g, "total": c.total, "trainable": c.trainable}
                             for g, c in groups.items()]
                    continue
                # a "_faithful" variant is the same method as published (official numerics)
                figure = paper.get((backbone, method.removesuffix("_faithful"), dataset))
                rows.append({**base, "total": count.total, "trainable": count.trainable,
                             "with_grad": grad, "trainable_M": round(count.trainable / 1e6, 2),
                             "paper_trainable_M": figure, "code": code})
    return rows


def run(args) -> int:
    rows = _rows(args)
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        import csv
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    else:
        def cell(value):  # "-" where a combination is unsupported or a count was skipped
            return "-" if value is None else f"{value:,}" if isinstance(value, int) else value
        shown = [{**r, **({"total": cell(r["total"]), "trainable": cell(r["trainable"]),
                           "trainable_M": cell(r["trainable_M"]), "with_grad": cell(r["with_grad"]),
                           "paper_trainable_M": r["paper_trainable_M"] if r["paper_trainable_M"] is not None
                           else "not reported"} if "with_grad" in r else {})} for r in rows]
        headers = {"backbone": "backbone", "method": "method", "dataset": "dataset", "group": "group",
                   "total": "total", "trainable": "trainable", "with_grad": "with grad",
                   "trainable_M": "trainable (M)", "paper_trainable_M": "paper (M)", "code": "code"}
        print(tabulate(shown, headers=headers, tablefmt="github", intfmt=","))
    return 0
