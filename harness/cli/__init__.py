"""Sub-command registry for ``run_all.py``.

Each sub-command is a module in this package exposing ``register(subparsers)``, which adds
its parser and sets ``func`` (a callable taking the parsed args and returning an exit code).
Adding a command = adding a module and its name to ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from models.errors import BenchError

# Order is the order shown in --help.
COMMANDS = ["demo", "params", "data", "build_cache", "train", "eval", "ckpt", "submit", "tables", "bench"]

DESCRIPTION = """\
Point-PEFT Bench: reproduce and benchmark parameter-efficient fine-tuning (Point-PEFT)
of pre-trained point-cloud transformers (Point-BERT, Point-MAE, Point-M2AE).

Run `python run_all.py COMMAND --help` for the options of one command."""


class UserError(BenchError):
    """A problem with the user's input on the command line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_all.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"harness.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
