"""Read the official checkpoint files of Point-MAE, Point-BERT and Point-M2AE onto our models.

The official loaders are lenient: ``load_state_dict(strict=False)`` after a rename, so a file
with the wrong naming loads nothing and says nothing (official checkpoints). This loader applies
the same renames (``KEYMAPS``) and then refuses anything suspicious: a model key the file lacks
(unless it is legitimately new, e.g. the head of a model started from pre-training), a shape
that differs, or a file where fewer than 90% of the backbone tensors match. Every error is one
line naming the file and the keys. What happened is returned as a ``LoadReport``.

Two kinds of file:
- ``pretrain``: the released pre-training ``base_model``; renamed per backbone, decoder parts
  are reported as unexpected, Point-BERT's momentum encoder / dVAE / queue as dropped. A model
  may rename further (``checkpoint_prefixes``: the Point-PEFT M2AE model's official names,
  ``M2AE_PEFT_NAMES``) and list the keys a pre-training file cannot have
  (``checkpoint_new_keys``: the Point-PEFT modules).
- ``finetune``: ``ckpt-best.pth`` / ``ckpt-last.pth`` (official, ``module.`` or not, in
  ``{'base_model': state_dict}`` or bare) or a run's ``best_test.pt``; strict both ways: every
  model tensor must be in the file (a run file of a PEFT run holds only what training changed;
  the frozen rest must come from the pre-training file it was trained on).
A file of the other kind is refused in one line saying what the file looks like
(``classify``). Project files written before the official leaf names load through
``LEGACY_KEYS``.
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
META_KEYS = ("epoch", "metrics", "best_metrics", "partial", "backbone_id", "run_id", "test_acc")
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

# Point-M2AE pre-training names -> the official Point-PEFT M2AE model's names (Point-PEFT
# ``M2AE/models/Point_Mask_Rev_FT_scan.py``); ``encoder_norms`` feed only the query encoder.
M2AE_PEFT_NAMES = (("h_encoder.token_embed.", "encoders."),
                   ("h_encoder.encoder_pos_embeds.", "pos_embeds."),
                   ("h_encoder.encoder_blocks.", "blocks."))

# The one key map for this project's own files written before the official leaf names:
# adapters ``down`` / ``up`` -> ``ln1`` / ``ln2``; a Point-PEFT M2AE model's ``h_encoder.*``
# -> ``encoders`` / ``pos_embeds`` / ``blocks`` (only in files that hold Point-PEFT tensors).
LEGACY_KEYS = ((re.compile(r"(^|\.)(adapter|adapter1|cp_adapter)\.down\."), r"\1\2.ln1."),
               (re.compile(r"(^|\.)(adapter|adapter1|cp_adapter)\.up\."), r"\1\2.ln2."))

# Tensors only a Point-PEFT model has (official module names).
PEFT_PARTS = ("adapter", "adapter1", "cp_adapter", "prompt_embeddings", "attn1", "norm3",
              "out_transform", "ad_gate", "prompt_cor")


def is_peft_key(key: str) -> bool:
    return any(part in PEFT_PARTS for part in key.split("."))


def upgrade_legacy_names(state: dict) -> tuple[dict, int]:
    """``state`` with ``LEGACY_KEYS`` applied; returns (new state, number of keys renamed)."""
    peft = any(is_peft_key(k) for k in state)
    out, renamed = {}, 0
    for key, value in state.items():
        new = key
        for pattern, repl in LEGACY_KEYS:
            new = pattern.sub(repl, new)
        if peft:
            for old, official in M2AE_PEFT_NAMES:
                if new.startswith(old):
                    new = official + new[len(old):]
        renamed += new != key
        out[new] = value
    return out, renamed


@dataclass(frozen=True)
class FileKind:
    """What a checkpoint file looks like, from its key names alone (``classify``)."""
    backbone: str | None   # point_mae / point_bert / point_m2ae, None if unknown
    stage: str             # "pretrain" or "finetune"
    method: str | None     # "point_peft", "full" (a fine-tuned file without PEFT tensors), None
    layout: str            # "official" (also this project's), "project (old names)", "run checkpoint"

    def describe(self) -> str:
        name = {"point_mae": "Point-MAE", "point_bert": "Point-BERT", "point_m2ae": "Point-M2AE",
                None: "unknown-backbone"}[self.backbone]
        if self.stage == "pretrain":
            return f"a {name} pre-training file ({self.layout} layout)"
        what = "Point-PEFT" if self.method == "point_peft" else "full"
        return f"a {name} {what} fine-tuned file ({self.layout} layout)"


def classify(state: dict, meta: dict | None = None) -> FileKind:
    """Backbone, pre-training vs fine-tuned, method and layout of a state dict (``module.``
    already stripped) and its ``read_checkpoint`` metadata."""
    keys = list(state)
    peft = any(is_peft_key(k) for k in keys)
    legacy = any(p.search(k) for k in keys for p, _ in LEGACY_KEYS)

    def has(prefix):
        return any(k.startswith(prefix) for k in keys)

    if has("h_encoder.") or has("encoders.") or any(_OLD_M2AE.match(k) for k in keys):
        backbone = "point_m2ae"
    elif has("transformer_q.") or has("reduce_dim.") or has("dgcnn_1."):
        backbone = "point_bert"
    elif has("MAE_encoder.") or has("encoder.first_conv."):
        backbone = "point_mae"
    else:
        backbone = None
    finetuned = peft or has("cls_head_finetune.")
    meta = meta or {}
    if "partial" in meta:
        layout = "run checkpoint"
    elif legacy or (peft and has("h_encoder.")):
        layout = "project (old names)"
    else:
        layout = "official"
    return FileKind(backbone, "finetune" if finetuned else "pretrain",
                    ("point_peft" if peft else "full") if finetuned else None, layout)


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
    found: FileKind | None = None                        # what the file looks like (classify)

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


def _model_rename(model: nn.Module) -> Callable[[str], str]:
    """The model's own renames after the backbone's (``checkpoint_prefixes``: (old, new) pairs)."""
    pairs = tuple(getattr(model, "checkpoint_prefixes", ()))

    def rename(key: str) -> str:
        for old, new in pairs:
            if key.startswith(old):
                return new + key[len(old):]
        return key
    return rename


def _example(state: dict, kind: FileKind) -> str:
    """A key that shows why the file is of ``kind``."""
    test = is_peft_key if kind.method == "point_peft" else (lambda k: k.startswith("cls_head_finetune."))
    return next((k for k in state if test(k)), next(iter(state)))


def load_checkpoint(model: nn.Module, path: str | Path, backbone: str, kind: str = "pretrain",
                    allow_missing: Iterable[str] = (), base_sha256: str | None = None) -> LoadReport:
    """Load a checkpoint file onto ``model`` (a ``backbone`` classifier, PEFT or not), or raise.

    ``kind``: "pretrain" (rename per backbone and model; the keys a pre-training file cannot
    have, such as the head and PEFT modules, stay at their init and are reported as missing),
    "finetune" (names as they are, ``LEGACY_KEYS`` applied; strict both ways) or "auto" (what
    ``classify`` says the file is). A file of the other kind is a ``CheckpointError``.
    ``allow_missing``: "head" and/or key patterns that may be absent or of another shape (e.g.
    a 40-class head onto a 15-class model); those keys keep their init.
    ``base_sha256``: the sha256 of the pre-training file already loaded; a run checkpoint of a
    PEFT run (only the trained tensors) must have been made on it, and its frozen tensors are
    the ones already in the model.
    """
    if backbone not in KEYMAPS:
        raise ConfigError(f"unknown backbone {backbone!r}; valid: {', '.join(sorted(KEYMAPS))}")
    if kind not in KINDS:
        raise ConfigError(f"unknown checkpoint kind {kind!r}; valid: {', '.join(KINDS)}")
    state, meta = read_checkpoint(path)
    found = classify(state, meta)
    if kind == "auto":
        kind = found.stage
    problem = _foreign_naming(state, backbone)
    if problem:
        _fail(path, problem)
    model_is_peft = any(is_peft_key(k) for k in model.state_dict())
    if kind == "pretrain" and found.stage == "finetune":
        _fail(path, f"is {found.describe()} (e.g. {_example(state, found)!r}), not a pre-training file; "
                    "give it as the fine-tuned checkpoint (model.finetuned, eval --checkpoint) and the "
                    "backbone's pre-training file as model.pretrained")
    if kind == "finetune" and found.stage == "pretrain" and found.backbone is not None:
        _fail(path, f"is {found.describe()} (no 'cls_head_finetune.*' or Point-PEFT tensors), not a "
                    "fine-tuned file; give it as model.pretrained (eval --pretrained)")
    if kind == "finetune" and found.method == "point_peft" and not model_is_peft:
        _fail(path, f"is {found.describe()}; build the model with method point_peft to load it")

    if kind == "pretrain":
        backbone_rename, extra = KEYMAPS[backbone].rename, _model_rename(model)

        def rename(k):
            mapped = backbone_rename(k)
            return None if mapped is None else extra(mapped)
    else:
        state, renamed = upgrade_legacy_names(state)
        meta["legacy_renamed"] = renamed

        def rename(k):
            return k
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    report = LoadReport(str(path), backbone, kind, meta=meta, found=found)
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
    if kind == "pretrain":
        new = tuple(getattr(model, "checkpoint_new_keys", ())) + KEYMAPS[backbone].new_in_pretrain
    elif meta.get("partial"):
        # a PEFT run's own file: the frozen tensors come from the pre-training file under it
        if base_sha256 is None or meta.get("backbone_id") != base_sha256:
            _fail(path, f"is a run checkpoint of the trained tensors only, made on backbone weights "
                        f"{meta.get('backbone_id')}; load that pre-training file first (model.pretrained"
                        + (f", which is {base_sha256[:12]}...)" if base_sha256 else ")"))
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        new = tuple(k for k in keys if k not in trained and k not in mapped)
    else:
        new = ()
    counted = [k for k in keys if not k.endswith("num_batches_tracked")]  # as PyTorch reports

    report.unexpected = [src for tgt, (src, _) in mapped.items() if tgt not in own]
    present = [k for k in keys if k in mapped]
    bad_shape = [k for k in present if mapped[k][1].shape != own[k].shape]
    report.skipped = [k for k in bad_shape if _matches(k, allowed)]
    report.loaded = [k for k in present if k not in bad_shape]
    report.missing = [k for k in counted if k not in mapped]

    backbone_keys = [k for k in counted if not _matches(k, new) and not is_peft_key(k)]
    hit = sum(k in mapped and k not in bad_shape for k in backbone_keys)
    if backbone_keys and hit < MIN_LOADED_FRACTION * len(backbone_keys):
        _fail(path, f"only {hit} of {len(backbone_keys)} {backbone} backbone tensors found "
                    f"with {kind} naming{_looks_like(state)}")
    not_allowed = [k for k in report.missing if not _matches(k, new + allowed)]
    if not_allowed:
        hint = ""
        if kind == "finetune" and model_is_peft and found.method != "point_peft":
            hint = f"; the file is {found.describe()}, the model needs a Point-PEFT fine-tuned file"
        _fail(path, f"{len(not_allowed)} model key(s) missing from the file: {_brief(not_allowed)}{hint}")
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


def pretrain_state(path: str | Path, backbone: str) -> dict[str, torch.Tensor]:
    """A pre-training file's tensors under the backbone model's names (the official rename),
    for the frozen query encoder; a fine-tuned file is refused (its weights are not the
    pre-trained ones the memory bank and the query were built from)."""
    if backbone not in KEYMAPS:
        raise ConfigError(f"unknown backbone {backbone!r}; valid: {', '.join(sorted(KEYMAPS))}")
    state, meta = read_checkpoint(path)
    found = classify(state, meta)
    if found.stage == "finetune":
        _fail(path, f"is {found.describe()} (e.g. {_example(state, found)!r}); the frozen query encoder "
                    "needs the backbone's pre-training file (model.pretrained)")
    rename = KEYMAPS[backbone].rename
    return {t: v for k, v in state.items() if (t := rename(k)) is not None}
