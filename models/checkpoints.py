"""Read the official checkpoint files of Point-MAE, Point-BERT and Point-M2AE onto our models.

The official loaders are lenient: ``load_state_dict(strict=False)`` after a rename, so a file
with the wrong naming loads nothing and says nothing (official checkpoints). This loader applies
the same renames (``KEYMAPS``) and then refuses anything suspicious: a model key the file lacks
(unless it is legitimately new, e.g. the head of a model started from pre-training), a shape
that differs, or a file where fewer than 90% of the backbone tensors match. Every error is one
line naming the file and the keys. What happened is returned as a ``LoadReport``.

Two kinds of file:
- ``pretrain``: the released pre-training ``base_model``; renamed per backbone, decoder parts
  are reported as unexpected, Point-BERT's momentum encoder / dVAE / queue as dropped.
- ``finetune``: ``ckpt-best.pth`` / ``ckpt-last.pth``, already in fine-tune naming; strict.
"""
from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from models.errors import CheckpointError, ConfigError

CONTAINER_KEYS = ("base_model", "model", "state_dict")  # looked up in this order
META_KEYS = ("epoch", "metrics", "best_metrics")
MIN_LOADED_FRACTION = 0.9
HEAD = ("cls_head_finetune.*",)
KINDS = ("pretrain", "finetune", "auto")


def _strip(prefix: str) -> Callable[[str], str | None]:
    return lambda k: k[len(prefix):] if k.startswith(prefix) else None


def _mae_rename(key: str) -> str | None:
    """Official Point-MAE: ``MAE_encoder.X`` -> X, ``base_model.X`` -> X, others as they are."""
    for prefix in ("MAE_encoder.", "base_model."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _bert_rename(key: str) -> str | None:
    """Official Point-BERT: keep ``transformer_q.X`` (not its ``cls_head``) and ``base_model.X``
    as X; every other key (transformer_k, dvae, queue, ...) is deleted before matching."""
    if key.startswith("transformer_q.cls_head."):
        return None
    return _strip("transformer_q.")(key) or _strip("base_model.")(key)


@dataclass(frozen=True)
class KeyMap:
    """How one backbone's pre-training checkpoint maps onto its fine-tune model."""
    rename: Callable[[str], str | None]   # checkpoint key -> model key; None = dropped
    new_in_pretrain: tuple[str, ...]      # patterns of model keys a pre-training file lacks


KEYMAPS: dict[str, KeyMap] = {
    "point_mae": KeyMap(_mae_rename, ("cls_token", "cls_pos") + HEAD),
    "point_bert": KeyMap(_bert_rename, HEAD),
    "point_m2ae": KeyMap(lambda k: k, ("norm.*",) + HEAD),   # names as they are
}

# Key prefixes that identify a file's origin, for "this looks like ..." hints.
_SIGNATURES = (("h_encoder.", "a Point-M2AE"), ("transformer_q.", "a Point-BERT pre-training"),
               ("dgcnn_1.", "a Point-BERT dVAE"), ("MAE_encoder.", "a Point-MAE pre-training"),
               ("reduce_dim.", "a Point-BERT fine-tune"), ("cls_head_finetune.", "a fine-tune"))
_OLD_M2AE = re.compile(r"^MAE_encoder\.(encoders\.\d+\.|blocks\.\d+\.blocks\.)")
_PEFT_M2AE = re.compile(r"^(encoders\.\d+\.|pos_embeds\.\d+\.|blocks\.\d+\.blocks\.)")


@dataclass
class LoadReport:
    """What a load did. ``missing`` keys kept their initial values (all were allowed)."""
    path: str
    backbone: str
    kind: str
    loaded: list[str] = field(default_factory=list)      # model keys filled from the file
    missing: list[str] = field(default_factory=list)     # model keys the file lacks (new ones)
    skipped: list[str] = field(default_factory=list)     # allowed keys whose shape differed
    unexpected: list[str] = field(default_factory=list)  # file keys (renamed) the model lacks
    dropped: list[str] = field(default_factory=list)     # file keys the official rule deletes
    meta: dict = field(default_factory=dict)             # container, epoch, metrics, best_metrics

    @cached_property
    def sha256(self) -> str:
        return file_sha256(self.path)

    def summary(self) -> str:
        epoch = self.meta.get("epoch")
        return (f"{self.backbone} {self.kind} checkpoint {self.path}: loaded {len(self.loaded)}, "
                f"missing {len(self.missing)}{_brief(self.missing, ' (')}, skipped {len(self.skipped)}, "
                f"unexpected {len(self.unexpected)}, dropped {len(self.dropped)}"
                + (f", epoch {epoch}" if epoch is not None else ""))


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes: ties adapter files and memory banks to their backbone file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _brief(keys: list[str], open_: str = "", n: int = 3) -> str:
    """'a, b, c (+4 more)'; with ``open_`` = ' (' it is wrapped in parentheses, empty if no keys."""
    if not keys:
        return ""
    text = ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")
    return f"{open_}{text})" if open_ else text


def _fail(path, message: str):
    raise CheckpointError(f"checkpoint {path}: {' '.join(str(message).split())}")


def _plain(value):
    """Metrics as plain Python values (0-d tensors and numpy scalars become numbers)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    is_np_scalar = type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0
    return value.item() if is_np_scalar else value


def _numpy_scalar_globals() -> list:
    """numpy scalars (e.g. a metric saved as np.float64) are safe to unpickle; allow them."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a torch dependency in practice
        return []
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def _torch_load(path: Path):
    """torch.load with weights_only (no code runs from the file); every failure is one line."""
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            _fail(path, f"holds a pickled {found.group(1)}, not only tensors and plain containers; "
                        "if you trust the file, re-save it as {'base_model': state_dict}")
        _fail(path, f"not a readable PyTorch checkpoint ({type(err).__name__}: {_first_line(err)})")
    except Exception as err:  # noqa: BLE001 - truncated zip, text file, ... -> one line
        _fail(path, f"not a readable PyTorch checkpoint, truncated or another format "
                    f"({type(err).__name__}: {_first_line(err)})")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0][:160] if text else "no message"


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict of a checkpoint file (every leading ``module.`` stripped) and its metadata.

    Accepts the official container (``base_model``, else ``model``, else ``state_dict``) or a
    bare state dict. Metadata: ``container`` (the key used, None for bare), ``epoch``,
    ``metrics``, ``best_metrics`` (where the file has them) and ``module_prefixed`` (keys that
    carried ``module.``).
    """
    path = Path(path)
    if not path.is_file():
        _fail(path, "file not found")
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        _fail(path, f"not a checkpoint: holds a {type(obj).__name__}, expected a dict with "
                    f"{'/'.join(CONTAINER_KEYS)} or a state dict")
    container = next((k for k in CONTAINER_KEYS if k in obj), None)
    raw = obj[container] if container else obj
    if not isinstance(raw, dict):
        _fail(path, f"'{container}' holds a {type(raw).__name__}, not a state dict")
    tensors = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        _fail(path, f"not a checkpoint: no tensors in {repr(container) if container else 'the top-level dict'} "
                    f"(keys: {_brief([str(k) for k in raw])})")
    state, prefixed = {}, 0
    for key, value in tensors.items():
        name = key
        while name.startswith("module."):
            name = name[len("module."):]
        prefixed += name != key
        if name in state:
            _fail(path, f"key {name!r} appears both with and without a 'module.' prefix")
        state[name] = value
    meta = {"container": container, "module_prefixed": prefixed}
    meta.update({k: _plain(obj[k]) for k in META_KEYS if container and k in obj})
    return state, meta


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(key, p) for p in patterns)


def _foreign_naming(state: dict, backbone: str) -> str | None:
    """A message when the file uses a naming no public code of this backbone uses."""
    if backbone != "point_m2ae" or any(k.startswith("h_encoder.") for k in state):
        return None
    old = [k for k in state if _OLD_M2AE.match(k)]
    if old:
        return (f"uses the old Point-M2AE naming (e.g. {old[0]!r}; Point-M2AE issue #5), not the public "
                "code's 'h_encoder.token_embed.*' / 'h_encoder.encoder_blocks.*'; use the released pre-train.pth")
    peft = [k for k in state if _PEFT_M2AE.match(k)]
    if peft:
        return (f"uses Point-PEFT's M2AE naming (e.g. {peft[0]!r}), not the public Point-M2AE names; map "
                "encoders.i -> h_encoder.token_embed.i, pos_embeds.i -> h_encoder.encoder_pos_embeds.i, "
                "blocks.i -> h_encoder.encoder_blocks.i first")
    return None


def _looks_like(state: dict) -> str:
    for prefix, what in _SIGNATURES:
        if any(k.startswith(prefix) for k in state):
            return f"; its keys look like {what} checkpoint (e.g. {next(k for k in state if k.startswith(prefix))!r})"
    return f"; its keys start {_brief(sorted(state))}"


def _resolve_allowed(model_keys: list[str], allow_missing: Iterable[str]) -> tuple[str, ...]:
    """``allow_missing`` items: "head" (the classification head) or fnmatch patterns of model keys."""
    patterns: list[str] = []
    for item in allow_missing:
        expanded = HEAD if item == "head" else (item,)
        if not any(_matches(k, expanded) for k in model_keys):
            raise ConfigError(f"allow_missing entry {item!r} matches no key of the model")
        patterns += expanded
    return tuple(patterns)


def load_checkpoint(model: nn.Module, path: str | Path, backbone: str, kind: str = "pretrain",
                    allow_missing: Iterable[str] = ()) -> LoadReport:
    """Load an official checkpoint file onto ``model`` (a ``backbone`` classifier), or raise.

    ``kind``: "pretrain" (rename per backbone; the keys a pre-training file cannot have, such as
    the head, stay at their init and are reported as missing), "finetune" (names as they are,
    strict both ways) or "auto" (finetune if the file has a ``cls_head_finetune`` key).
    ``allow_missing``: "head" and/or key patterns that may be absent or of another shape (e.g.
    a 40-class head onto a 15-class model); those keys keep their init. A model may list keys it
    adds on top of the backbone (PEFT modules) as patterns in ``checkpoint_new_keys``.
    """
    if backbone not in KEYMAPS:
        raise ConfigError(f"unknown backbone {backbone!r}; valid: {', '.join(sorted(KEYMAPS))}")
    if kind not in KINDS:
        raise ConfigError(f"unknown checkpoint kind {kind!r}; valid: {', '.join(KINDS)}")
    state, meta = read_checkpoint(path)
    if kind == "auto":
        kind = "finetune" if any(k.startswith("cls_head_finetune.") for k in state) else "pretrain"
    problem = _foreign_naming(state, backbone)
    if problem:
        _fail(path, problem)

    rename = KEYMAPS[backbone].rename if kind == "pretrain" else (lambda k: k)
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    report = LoadReport(str(path), backbone, kind, meta=meta)
    for key, value in state.items():
        target = rename(key)
        if target is None:
            report.dropped.append(key)
        elif target in mapped:
            _fail(path, f"keys {mapped[target][0]!r} and {key!r} both map to {target!r}")
        else:
            mapped[target] = (key, value)

    own = model.state_dict()
    keys = list(own)
    allowed = _resolve_allowed(keys, allow_missing)
    new = tuple(getattr(model, "checkpoint_new_keys", ()))
    new += KEYMAPS[backbone].new_in_pretrain if kind == "pretrain" else ()
    counted = [k for k in keys if not k.endswith("num_batches_tracked")]  # as PyTorch reports

    report.unexpected = [src for tgt, (src, _) in mapped.items() if tgt not in own]
    present = [k for k in keys if k in mapped]
    bad_shape = [k for k in present if mapped[k][1].shape != own[k].shape]
    report.skipped = [k for k in bad_shape if _matches(k, allowed)]
    report.loaded = [k for k in present if k not in bad_shape]
    report.missing = [k for k in counted if k not in mapped]

    backbone_keys = [k for k in counted if not _matches(k, new)]
    found = sum(k in mapped and k not in bad_shape for k in backbone_keys)
    if backbone_keys and found < MIN_LOADED_FRACTION * len(backbone_keys):
        hint = _looks_like(state)
        has_head = any(k.startswith("cls_head_finetune.") for k in state)
        if has_head != (kind == "finetune"):
            hint += "; for a fine-tuned file use kind='finetune'" if has_head else \
                "; for a pre-training file use kind='pretrain'"
        _fail(path, f"only {found} of {len(backbone_keys)} {backbone} backbone tensors found "
                    f"with {kind} naming{hint}")
    not_allowed = [k for k in report.missing if not _matches(k, new + allowed)]
    if not_allowed:
        _fail(path, f"{len(not_allowed)} model key(s) missing from the file: {_brief(not_allowed)}")
    wrong = [k for k in bad_shape if k not in report.skipped]
    if wrong:
        shapes = "; ".join(f"{k} expected {list(own[k].shape)} found {list(mapped[k][1].shape)}"
                           for k in wrong[:3])
        _fail(path, f"shape mismatch for {len(wrong)} key(s): {shapes}"
                    + (f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""))
    if kind == "finetune" and report.unexpected:
        _fail(path, f"{len(report.unexpected)} key(s) in the file are not in the model: "
                    f"{_brief(report.unexpected)}")

    result = model.load_state_dict({k: mapped[k][1] for k in report.loaded}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # every key was checked above
    return report
