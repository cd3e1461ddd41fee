"""``run_all.py train``: one training run, in this process (or one rank of torchrun)."""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from harness.cli import one_line, os_error_line, run_command
from models.errors import BenchError

HELP = """\
Train and evaluate one run from a config file and write its folder
<runs_dir>/<run_id>/: result.json (the record), metrics.csv, checkpoint.pt (every epoch),
best_test.pt, TensorBoard events (tb/; output.tensorboard null = when tensorboard is installed),
and memory_bank.pt for a Point-PEFT run that builds one. Progress (one line per epoch, and per
10% of a ModelNet40 .dat cache being built) goes to stdout: the terminal, or the job's log
(results/submitit/<experiment>/) under `submit`.

The config is YAML with `_base_` inheritance (see experiments/recipes/); --set overrides any
dotted key with a YAML value. Relative paths in the config (data.root, model.pretrained,
model.finetuned, output.runs_dir ...) are taken under the project root; --runs-dir is taken as
given. model.pretrained is the backbone's pre-training file (for Point-PEFT also the frozen query
encoder); model.finetuned, if set, is a fine-tuned file loaded strictly after it, to continue from.
A run whose folder holds a checkpoint resumes from it; a finished run is not run again.
Several processes (torchrun, or a multi-task submitit job) train one run data-parallel.

Exit status: 0 done, 1 the run failed (its failure record says why), 2 a bad config, bad or
missing files, a bad --device or a run another process is training (found before training
starts: nothing was run and no record is written), 130 interrupted (Ctrl-C: re-run the same
command to resume from the last checkpoint).

examples:
  python run_all.py train experiments/tiny.yaml --set data.root=/tmp/synth
  python run_all.py train experiments/recipes/scanobjectnn.yaml --set train.seed=1 model.pretrained=ckpts/pretrain.pth
  torchrun --nproc_per_node 2 run_all.py train experiments/tiny.yaml --set train.freeze_bn=true"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train and evaluate one run from a config file",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, metavar="CONFIG.yaml", help="the run config")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a dotted key, e.g. train.seed=1 optim.lr=1e-3 (repeatable)")
    p.add_argument("--runs-dir", type=Path, metavar="DIR", help="where run folders go (output.runs_dir)")
    p.add_argument("--device", metavar="DEV", help="torch device (default: the local GPU, else cpu)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config, run id and hash, and exit without training")


def _load(args):
    from harness import config as run_config

    overrides = [item for group in args.overrides for item in group]
    if args.runs_dir is not None:
        overrides.append(f"output.runs_dir={json.dumps(str(args.runs_dir.resolve()))}")
    return run_config.load_config(args.config, overrides)


def run(args) -> int:
    from harness import config as run_config
    from harness import train

    cfg = _load(args)
    if args.print_config:
        print(json.dumps({"run_id": run_config.run_id(cfg), "config_hash": run_config.config_hash(cfg),
                          "config": run_config.to_dict(cfg)}, indent=2))
        return 0
    run_config.check_paths(cfg)   # one line, before any work
    train.check_engine(cfg)
    try:
        record = train.run(cfg, device=args.device)
    except BenchError as err:
        if getattr(err, "nothing_run", False):
            raise   # a config / data problem found before training: exit 2, no record
        print(f"error: run {run_config.run_id(cfg)} failed: {one_line(err)} "
              f"(failure record: {train.result_path(cfg)})", file=sys.stderr)
        return 1
    except OSError as err:   # disk full, read-only folder ...: the record says the same
        print(f"error: run {run_config.run_id(cfg)} failed: {os_error_line(err)} "
              f"(failure record: {train.result_path(cfg)})", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a bug: keep its traceback, point at the record
        traceback.print_exc()
        print(f"error: run {run_config.run_id(cfg)} failed: {type(err).__name__}: {err} "
              f"(failure record: {train.result_path(cfg)})", file=sys.stderr)
        return 1
    m = record.get("metrics") or {}
    shown = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items() if v is not None)
    print(f"{record['run_id']}: {record['status']} ({shown}); record {train.result_path(cfg)}")
    return 0 if record["status"] == "done" else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.cli.train``: the same command without the run_all.py wrapper."""
    parser = argparse.ArgumentParser(prog="python -m harness.cli.train", description=HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
