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
COMMANDS = ["demo", "params", "data", "build_cache", "train", "eval", "ckpt", "submit", "tables", "zoo_tables", "bench"]
# command as typed -> its module, where the names differ (``submit`` also registers ``status``)
MODULE_OF = {**{name.replace("_", "-"): name for name in COMMANDS}, "status": "submit"}

DESCRIPTION = """\
Point-PEFT Bench: reproduce and benchmark parameter-efficient fine-tuning (Point-PEFT)
of pre-trained point-cloud transformers (Point-BERT, Point-MAE, Point-M2AE).

Run `python run_all.py COMMAND --help` for the options of one command."""


# import name -> distribution, for each of pyproject.toml's dependencies (tests check both lists)
DEPENDENCIES = {"torch": "torch", "numpy": "numpy", "submitit": "submitit", "yaml": "pyyaml",
                "pandas": "pandas", "tabulate": "tabulate", "h5py": "h5py", "tqdm": "tqdm",
                "matplotlib": "matplotlib", "orjson": "orjson", "msgspec": "msgspec"}


def missing_dependency_line(err: ModuleNotFoundError) -> str | None:
    """One line for a declared dependency that this interpreter cannot import (the project not
    installed in it, or its virtual environment not active); None for any other module."""
    name = (err.name or "").partition(".")[0]
    if name not in DEPENDENCIES:
        return None
    return (f"error: the package {DEPENDENCIES[name]} (import {name}) is not installed for "
            f"{sys.executable}; activate the project's virtual environment, or install the project "
            "into this one with pip install -e \".[dev]\" (README, Quick start)")


class UserError(BenchError):
    """A problem with the user's input on the command line."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, or with ``only`` (a module of ``COMMANDS``) of that
    module's: ``main`` imports just the module of the command it runs, so ``tables`` never
    imports torch."""
    parser = argparse.ArgumentParser(
        prog="run_all.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        if only is None or name == only:
            importlib.import_module(f"harness.cli.{name}").register(sub)
    return parser


INTERRUPTED = "interrupted; re-run the same command to resume"


def one_line(text: str) -> str:
    """A message on one line (a newline in a user's value must not start a second line)."""
    return " ".join(str(text).split())


def os_error_line(err: OSError) -> str:
    """'no space left on device: PATH', 'not a directory: PATH', ... for an OSError."""
    from harness.checkpointing import os_error_text

    return one_line(os_error_text(err))


def run_command(func, args) -> int:
    """Call a sub-command; user errors, OS errors and Ctrl-C become one line on stderr.

    Exit status: the command's own, 2 for a BenchError (bad input: nothing was run), 1 for an
    OSError (disk full, read-only, a file where a folder belongs ...), 130 for Ctrl-C.
    """
    try:
        return int(func(args) or 0)
    except BenchError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(MODULE_OF.get(argv[0]) if argv else None)
        args = parser.parse_args(argv)
        return run_command(args.func, args)
    except ModuleNotFoundError as err:
        line = missing_dependency_line(err)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 1
