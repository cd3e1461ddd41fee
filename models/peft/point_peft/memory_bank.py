"""Memory-bank files: one (D, M) float32 matrix of query features plus what it was built from.

File format (``torch.save``, read back with ``weights_only=True``)::

    {"format": "point-peft-memory-bank", "version": 1, "bank": Tensor (D, M), "meta": {...}}

``meta``: backbone (registry name), checkpoint (sha256 of the pre-trained backbone file, or
"random-init"), query (the query encoder's settings), dataset, split, count (M), feature_dim (D),
normalize (columns L2-normalised), drop_last, created (UTC ISO time). A bank only makes sense
for the query encoder that produced it, so loading checks backbone, checkpoint, feature width
and query settings against the model and fails with one line naming every difference.

Building needs data and a progress bar, so it lives in ``harness.memory_bank``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from models.errors import BenchError

FORMAT = "point-peft-memory-bank"
VERSION = 1
BACKBONE_NAMES = {"mae": "point_mae", "bert": "point_bert", "m2ae": "point_m2ae"}


class MemoryBankError(BenchError, ValueError):
    """A memory-bank file that is unreadable or does not fit the model."""


def model_bank_identity(model) -> dict:
    """What a bank must agree on with ``model`` (a Point-PEFT model)."""
    return {"backbone": BACKBONE_NAMES[model.kind],
            "checkpoint": model.checkpoint_sha256 or "random-init",
            "feature_dim": int(model.query_dim),
            "query": model.query_encoder.describe()}


def save_memory_bank(path: str | Path, bank_dict: dict) -> Path:
    """Write {bank, meta} atomically (temporary file in the same folder, then rename)."""
    bank, meta = bank_dict["bank"], dict(bank_dict.get("meta", {}))
    if not isinstance(bank, torch.Tensor) or bank.dim() != 2:
        raise MemoryBankError(f"memory bank to save must be a (D, M) tensor, got "
                              f"{tuple(bank.shape) if isinstance(bank, torch.Tensor) else type(bank).__name__}")
    meta.setdefault("count", int(bank.shape[1]))
    meta.setdefault("feature_dim", int(bank.shape[0]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, "version": VERSION,
                        "bank": bank.detach().to("cpu", torch.float32).contiguous(), "meta": meta}, fh)
        umask = os.umask(0)   # mkstemp makes 0600; a bank is shared like any file: 0666 & ~umask
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_memory_bank(path: str | Path) -> dict:
    """{bank, meta} of a bank file, with its format checked."""
    path = Path(path)
    if not path.is_file():
        raise MemoryBankError(f"memory bank {path}: file not found (build one with run_all.py build-cache)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one line
        raise MemoryBankError(f"memory bank {path}: not a readable torch file ({type(err).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise MemoryBankError(f"memory bank {path}: not a Point-PEFT memory bank (no format tag {FORMAT!r})")
    if obj.get("version") != VERSION:
        raise MemoryBankError(f"memory bank {path}: format version {obj.get('version')}, this code reads {VERSION}")
    bank = obj.get("bank")
    if not isinstance(bank, torch.Tensor) or bank.dim() != 2:
        raise MemoryBankError(f"memory bank {path}: 'bank' is not a (D, M) tensor")
    return {"bank": bank, "meta": dict(obj.get("meta", {}))}


def check_memory_bank(bank_dict: dict, model, expect: dict | None = None, where: str = "memory bank") -> None:
    """Raise one MemoryBankError listing every way the bank differs from the model / ``expect``."""
    bank, meta = bank_dict["bank"], bank_dict["meta"]
    wanted = model_bank_identity(model)
    found = {**meta, "feature_dim": int(bank.shape[0])}
    diffs = []
    for key, value in {**wanted, **(expect or {})}.items():
        have = found.get(key, "<missing>")
        if have != value:
            diffs.append(f"{key} is {_short(have)}, expected {_short(value)}")
    if diffs:
        raise MemoryBankError(f"{where} does not fit this model: {'; '.join(diffs)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 24 or not isinstance(value, str) else repr(value[:12] + "...")


def load_memory_bank(path: str | Path, model, expect: dict | None = None, install: bool = True) -> torch.Tensor:
    """Read a bank file, check it against ``model`` (and ``expect``: meta fields such as
    dataset / split / normalize), install it on the model unless ``install=False``, return it."""
    bank_dict = read_memory_bank(path)
    check_memory_bank(bank_dict, model, expect, where=f"memory bank {path}")
    if install:
        model.set_memory_bank(bank_dict["bank"])
    return bank_dict["bank"]
