"""Build, save and load Point-PEFT memory banks (the point-prior prompt's "cache").

A bank is the matrix of frozen pre-trained query features of a training split, one column per
sample: ``build_memory_bank`` runs ``model.query_features`` (the very function the model uses
for its retrieval query) over a DataLoader of (points, label) batches. The official bank
(11392 = 356 x 32 columns of the 11416-sample PB_T50_RS train split) suggests one pass with
batch 32 and ``drop_last``: only faithful mode reproduces that drop (``bank_drop_last``); by
default every training sample gets a column. Its columns are taken to be L2-normalised
(inferred from the official bank).

The file format and the checks against a model are in ``models.peft.point_peft.memory_bank``;
``save_memory_bank`` / ``load_memory_bank`` are re-exported here.
"""
from __future__ import annotations

from datetime import datetime, timezone

import torch
from torch.utils.data import DataLoader

from models.peft.point_peft.memory_bank import (MemoryBankError, check_memory_bank, is_official,
                                                 load_memory_bank, model_bank_identity, read_memory_bank, save_memory_bank)

__all__ = ["bank_drop_last", "build_memory_bank", "save_memory_bank", "load_memory_bank", "read_memory_bank",
           "check_memory_bank", "is_official", "bank_record", "MemoryBankError"]


def bank_record(path, bank_dict: dict) -> dict:
    """What a run / eval record says about its bank: path, file sha256, source and metadata
    (an imported official bank: ``source: imported official file``, its sha256, shape)."""
    from models.checkpoints import file_sha256

    meta = {k: v for k, v in bank_dict["meta"].items() if k != "query"}
    return {"path": str(path), "sha256": meta.get("sha256") or file_sha256(path),
            "source": meta.get("source", "built by this project"), "meta": meta}


def bank_drop_last(model) -> bool:
    """Whether the bank of ``model`` leaves out the last incomplete batch of the split: only in
    Point-PEFT's faithful mode (the official bank's ``drop_last``); otherwise every sample."""
    return getattr(getattr(model, "opts", None), "mode", None) == "faithful"


@torch.no_grad()
def build_memory_bank(model, loader: DataLoader, device: str | torch.device = "cpu", progress: bool = True,
                      normalize: bool = True, dataset: str | None = None, split: str | None = None) -> dict:
    """Query features of every batch of ``loader`` as columns: {"bank": (D, M), "meta": {...}}.

    ``model`` is a Point-PEFT model (its frozen query encoder does the work, in eval mode).
    ``dataset`` / ``split`` default to the loader's dataset ``name`` / ``split`` attributes.
    """
    from tqdm import tqdm

    if not hasattr(model, "query_features"):
        raise MemoryBankError(f"{type(model).__name__} has no query encoder: build the bank with a "
                              "Point-PEFT model (method point_peft)")
    model.to(device)
    feats = []
    batches = tqdm(loader, desc="memory bank", unit="batch", disable=not progress, leave=False)
    for batch in batches:
        pts = batch[0] if isinstance(batch, (list, tuple)) else batch
        feats.append(model.query_features(pts.to(device, torch.float32)).float().cpu())
    if not feats:
        raise MemoryBankError("memory bank: the loader gave no batch (fewer samples than one batch "
                              "with drop_last?)")
    bank = torch.cat(feats, dim=0).t().contiguous()
    if normalize:
        bank = bank / bank.norm(dim=0, keepdim=True).clamp_min(1e-12)
    ds = loader.dataset
    meta = {**model_bank_identity(model),
            "dataset": dataset if dataset is not None else getattr(ds, "name", None),
            "split": split if split is not None else getattr(ds, "split", None),
            "count": int(bank.shape[1]), "normalize": bool(normalize),
            "drop_last": bool(getattr(loader, "drop_last", False)),
            "left_out": (len(ds) - int(bank.shape[1])) if hasattr(ds, "__len__") else None,
            "batch_size": getattr(loader, "batch_size", None),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return {"bank": bank, "meta": meta}
