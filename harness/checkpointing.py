"""Run checkpoints: what a run saves each epoch and how it comes back.

A full fine-tuning run saves the whole model state. A PEFT run saves only what training
changes: the tensors that require grad and the buffers that training updates (those of
modules in train mode during training, e.g. BatchNorm statistics), tied to the hash of the
backbone weights it sits on; loading refuses a file made on other backbone weights.
Files are written atomically (temp file + os.replace), so a kill leaves the previous one.
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness import tempfiles
from models.errors import CheckpointError

FORMAT = 1


def os_error_text(err: OSError) -> str:
    """An OSError as the user should read it: "no space left on device: /runs/x/checkpoint.pt"."""
    text = (err.strerror or str(err)).strip()
    text = text[:1].lower() + text[1:]
    return f"{text}: {err.filename}" if err.filename else text


def _os_cause(err: BaseException) -> OSError | None:
    while err is not None:
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None


def save_atomic(obj, path: Path | str) -> None:
    """torch.save via a temp file in the same folder and os.replace.

    A write that fails for lack of space (or any OS reason) is an ``OSError`` naming the file
    ("no space left on device: PATH"), not PyTorch's internal stream-writer message; the temp
    file is removed either way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _save_atomic(obj, path)
    except (OSError, RuntimeError) as err:
        cause = _os_cause(err)
        if cause is None and isinstance(err, RuntimeError) and _disk_full(path.parent):
            cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None


def _disk_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def _save_atomic(obj, path: Path) -> None:
    fd, tmp = tempfiles.mkstemp_for(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, tempfiles.shared_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def trained_buffer_names(model: nn.Module) -> list[str]:
    """Persistent buffers of modules in train mode (call with the model set up for training)."""
    persistent = set(model.state_dict())
    names = []
    for mod_name, module in model.named_modules():
        if not module.training:
            continue
        for buf_name, _ in module.named_buffers(recurse=False):
            full = f"{mod_name}.{buf_name}" if mod_name else buf_name
            if full in persistent:
                names.append(full)
    return names


def model_state(model: nn.Module, partial: bool, buffer_names: list[str] | None = None) -> dict:
    """Whole state dict, or trainable parameters + the named buffers (cloned to CPU)."""
    state = model.state_dict()
    if partial:
        keep = {n for n, p in model.named_parameters() if p.requires_grad} | set(buffer_names or ())
        state = {k: v for k, v in state.items() if k in keep}
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def load_model_state(model: nn.Module, state: dict, partial: bool, where: str) -> None:
    """Load a (partial) state; every saved key must exist with the same shape. Files written
    before the official Point-PEFT leaf names are renamed (``models.checkpoints.LEGACY_KEYS``)."""
    from models.checkpoints import upgrade_legacy_names

    state, _ = upgrade_legacy_names(state)
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if unknown or wrong:
        raise CheckpointError(f"{where}: does not fit the model: unknown keys {unknown[:3]}, "
                              f"shape mismatch {wrong[:3]} (config or code changed?)")
    missing = [k for k in own if k not in state]
    if missing and not partial:
        raise CheckpointError(f"{where}: lacks {len(missing)} model keys, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=False)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])


def load(path: Path | str, where: str = "checkpoint") -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure: not a usable checkpoint
        raise CheckpointError(f"{path}: cannot read the run {where}: {type(err).__name__}: {err}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a run {where} of format {FORMAT}")
    return obj
