"""Adapter-only checkpoints: the tuned tensors of a PEFT model plus its frozen backbone's hash.

``adapter_state(model)`` holds every parameter with ``requires_grad`` plus the buffers that
training changes (running statistics of every BatchNorm that is in train mode after
``model.train()``: the tuned modules' own, and in a faithful mode also the frozen backbone's).
Everything else is the frozen backbone; ``backbone_hash(model)`` is a sha256 over those
tensors' names, shapes, dtypes and bytes, so an adapter file refuses to load onto a different
backbone (other pre-trained weights, another method or other options).

File (``torch.save``): ``{"format": FORMAT, "method": str, "backbone_sha256": str,
"checkpoint_sha256": str | None, "state": {name: tensor}}``; a few hundred kB to a few MB
against ~90 MB for the whole model.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from models.errors import CheckpointError

FORMAT = "point-peft-bench adapter v1"


def stat_buffers(model: nn.Module) -> set[str]:
    """Names of the buffers training updates: BatchNorm statistics of the BNs that are in train
    mode after ``model.train()`` (the model's mode is restored)."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        names = set()
        for prefix, m in model.named_modules(remove_duplicate=False):  # aliases too
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
                names.update(f"{prefix}.{b}" if prefix else b for b, _ in m.named_buffers(recurse=False))
    finally:
        for m, mode in modes.items():
            m.training = mode
    return names


def adapter_keys(model: nn.Module) -> list[str]:
    """State-dict names of the tuned tensors and the statistics training updates."""
    tuned = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    stats = stat_buffers(model)
    return [k for k in model.state_dict() if k in tuned or k in stats]


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: state[k].detach().cpu().clone() for k in adapter_keys(model)}


def backbone_hash(model: nn.Module) -> str:
    """sha256 of the frozen part (every state-dict entry not in ``adapter_keys``)."""
    keep = set(adapter_keys(model))
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        if name in keep:
            continue
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_adapter(model: nn.Module, path: str | Path, method: str) -> Path:
    """Write the adapter file atomically; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "method": method, "backbone_sha256": backbone_hash(model),
               "checkpoint_sha256": getattr(model, "checkpoint_sha256", None), "state": adapter_state(model)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_adapter(model: nn.Module, path: str | Path, method: str | None = None) -> dict:
    """Load an adapter file onto ``model`` (built with the same method, options and backbone).

    Raises ``CheckpointError`` (one line) when the file is not an adapter file, was written for
    another method, another backbone (hash) or holds other tensors than the model tunes.
    Returns the file's metadata (without the state).
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"adapter file {path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - unreadable file: one line for the user
        raise CheckpointError(f"adapter file {path} cannot be read: {str(err).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an adapter file (expected format {FORMAT!r})")
    if method is not None and payload["method"] != method:
        raise CheckpointError(f"adapter file {path} is for method {payload['method']!r}, not {method!r}")
    expected = backbone_hash(model)
    if payload["backbone_sha256"] != expected:
        raise CheckpointError(f"adapter file {path} was written on another backbone (hash "
                              f"{payload['backbone_sha256'][:12]}, this model's frozen part is {expected[:12]})")
    state, keys = payload["state"], adapter_keys(model)
    missing, extra = sorted(set(keys) - set(state)), sorted(set(state) - set(keys))
    if missing or extra:
        raise CheckpointError(f"adapter file {path} does not fit this model: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}")
    own = model.state_dict()
    bad = [k for k in keys if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"adapter file {path}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                              f"the model's is {tuple(own[bad[0]].shape)}")
    model.load_state_dict(state, strict=False)
    return {k: v for k, v in payload.items() if k != "state"}
