"""Memory-bank files: one (D, M) float32 matrix of query features plus what it was built from.

File format (``torch.save``, read back with ``weights_only=True``)::

    {"format": "point-peft-memory-bank", "version": 1, "bank": Tensor (D, M), "meta": {...}}

``meta``: backbone (registry name), checkpoint (sha256 of the pre-trained backbone file, or
"random-init"), query (the query encoder's settings), dataset, split, count (M), feature_dim (D),
normalize (columns L2-normalised), drop_last, created (UTC ISO time). A bank only makes sense
for the query encoder that produced it, so loading checks backbone, checkpoint, feature width
and query settings against the model and fails with one line naming every difference. A bank
that does not belong to the run is refused too: one built from a split other than ``train``
(the test split would leak test features into every prediction), one of another dataset
(``expect``), one whose tensor disagrees with its own metadata (count / feature_dim).

The authors' released bank (``cache_shape.pt``, used as ``train_f_pos_shape*.pt``) is a bare
float tensor (384, M) with no metadata (spec point-peft §2.1). It is imported as it is: only its
width can be checked against the model; its identity is its sha256, recorded as
``{"source": "imported official file", "sha256": ...}``.

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
OFFICIAL_SOURCE = "imported official file"
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
    if (meta["feature_dim"], meta["count"]) != tuple(bank.shape):
        raise MemoryBankError(f"memory bank to save is {tuple(bank.shape)} but its metadata says feature_dim="
                              f"{meta['feature_dim']}, count={meta['count']}")
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
    if isinstance(obj, torch.Tensor):
        return _official_bank(obj, path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise MemoryBankError(f"memory bank {path}: not a Point-PEFT memory bank (no format tag {FORMAT!r}) "
                              "and not a bare (D, M) float tensor as the authors' cache_shape.pt")
    if obj.get("version") != VERSION:
        raise MemoryBankError(f"memory bank {path}: format version {obj.get('version')}, this code reads {VERSION}")
    bank = obj.get("bank")
    if not isinstance(bank, torch.Tensor) or bank.dim() != 2 or not bank.is_floating_point():
        raise MemoryBankError(f"memory bank {path}: 'bank' is not a (D, M) float tensor")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise MemoryBankError(f"memory bank {path}: 'meta' is a {type(meta).__name__}, not a mapping")
    for key, size in (("feature_dim", bank.shape[0]), ("count", bank.shape[1])):
        if key in meta and meta[key] != int(size):
            raise MemoryBankError(f"memory bank {path}: the tensor is {tuple(bank.shape)} but its metadata "
                                  f"says {key}={meta[key]!r}; the file is inconsistent, rebuild it")
    _check_finite(bank, path)
    return {"bank": bank, "meta": dict(meta)}


def _check_finite(bank: torch.Tensor, path) -> None:
    bad = (~torch.isfinite(bank)).any(dim=0).nonzero().flatten()
    if bad.numel():
        raise MemoryBankError(f"memory bank {path}: {bad.numel()} column(s) hold NaN or inf, e.g. column "
                              f"{int(bad[0])}")


def _official_bank(bank: torch.Tensor, path: Path) -> dict:
    """The authors' bare (D, M) tensor, with the only identity it has: its bytes."""
    if bank.dim() != 2 or not bank.is_floating_point():
        raise MemoryBankError(f"memory bank {path}: a bare tensor of shape {tuple(bank.shape)} and dtype "
                              f"{bank.dtype}; the official bank is a (384, M) float matrix, one column per sample")
    _check_finite(bank, path)
    from models.checkpoints import file_sha256
    meta = {"source": OFFICIAL_SOURCE, "sha256": file_sha256(path), "feature_dim": int(bank.shape[0]),
            "count": int(bank.shape[1])}
    return {"bank": bank.float(), "meta": meta}


def is_official(bank_dict: dict) -> bool:
    return bank_dict["meta"].get("source") == OFFICIAL_SOURCE


def check_memory_bank(bank_dict: dict, model, expect: dict | None = None, where: str = "memory bank") -> None:
    """Raise one MemoryBankError listing every way the bank differs from the model / ``expect``.

    An imported official bank has no metadata: only its width is checked (``expect`` too is
    skipped: nothing in the file says which dataset or split it holds)."""
    bank, meta = bank_dict["bank"], bank_dict["meta"]
    if is_official(bank_dict):
        if bank.shape[0] != model.query_dim:
            hint = "; it looks transposed" if bank.shape[1] == model.query_dim else ""
            raise MemoryBankError(f"{where}: official bank of shape {tuple(bank.shape)} does not fit this model: "
                                  f"expected ({model.query_dim}, M), one {model.query_dim}-d feature per column{hint}")
        return
    if meta.get("split") not in (None, "train"):   # None: built from a loader without a split name
        raise MemoryBankError(f"{where}: built from the {meta['split']!r} split; a bank must hold training "
                              "samples only (test features in the bank leak into every prediction): "
                              "rebuild it with build-cache --split train")
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
        try:
            model.set_memory_bank(bank_dict["bank"])
        except ValueError as err:
            raise MemoryBankError(f"memory bank {path}: {err}") from None
    return bank_dict["bank"]
