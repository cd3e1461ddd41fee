"""Point-cloud classification datasets in their official on-disk formats.

`build_dataset(name, root, split, **opts)` is the one entry point; `DATASET_NAMES` lists the
valid names. Every problem with a user's files is a `DataError` whose one-line message names
the file, what was found, what was expected and where the official data comes from.
"""
from __future__ import annotations

from pathlib import Path

from models.errors import BenchError


class DataError(BenchError, ValueError):
    """A dataset file that is missing or does not have the official format."""


def data_error(path: str | Path, found: str, expected: str, source: str) -> DataError:
    """The one-line message every loader uses: `PATH: <found>; expected <...> (source: ...)`.

    `found` is a phrase such as "no such file" or "found keys ['data']".
    """
    return DataError(f"{path}: {found}; expected {expected} (source: {source})")


# Imported after DataError so the submodules can import it from here.
from harness.data.registry import DATASET_NAMES, DATASETS, build_dataset  # noqa: E402

__all__ = ["DataError", "data_error", "DATASET_NAMES", "DATASETS", "build_dataset"]
