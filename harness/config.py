"""Run configuration: YAML files with ``_base_`` inheritance -> one typed, frozen ``RunConfig``.

A config file is a YAML mapping whose sections mirror the dataclasses below. ``_base_`` (a path
or a list of paths, relative to the file that names it) pulls in other files first; the file's
own keys are then deep-merged over them (mappings merge key by key, lists and scalars replace).
``--set a.b.c=value`` overrides (``apply_overrides``) are merged last; their values are YAML.

Validation is strict: an unknown key, or a value of the wrong type, is a ``ConfigError`` naming
the FILE that set it, the dotted KEY and what was expected. Paths are kept as written (so a
config hashes the same on every machine) and resolved at use time by ``resolve_path``: absolute
paths stay, relative ones are taken relative to the project root.

``config_hash`` and ``run_id`` are pure functions of the resolved config; fields that do not
change a run's results (``NON_RESULT_FIELDS``) are left out of the hash.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from models.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SET_SOURCE = "--set"

# The official point_all for each npoints (the official fine-tuning runners); kept here so config validation
# does not import the data package.
POINT_ALL = {1024: 1200, 2048: 2400, 4096: 4800, 8192: 8192}


# ----------------------------------------------------------------------------- dataclasses

@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "point_mae"
    method: str = "full"                  # "full" or a PEFT method of models.peft
    method_options: dict = field(default_factory=dict)    # passed to the method (bank_path is the harness's)
    backbone_options: dict = field(default_factory=dict)  # overrides of the backbone's config dataclass
    pretrained: Optional[str] = None      # pre-training file: backbone init and frozen query encoder
    pretrained_kind: Literal["pretrain", "finetune", "auto"] = "pretrain"
    finetuned: Optional[str] = None       # a fine-tuned file (official or a run's), loaded after: evaluated / continued
    allow_missing: tuple[str, ...] = ()   # "head" and/or key patterns the file may lack (models.checkpoints)
    pretrained_sha256: Optional[str] = None   # filled when resolved: the file's sha256 ("missing" if absent)
    allow_random_init: bool = False       # PEFT on a random frozen backbone only when true (pipeline tests)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = ""
    root: str = ""
    synthetic: bool = False               # the root holds generated data (record: data_source)
    npoints: Optional[int] = None         # null = the backbone's official npoints for the dataset
    point_all: Optional[int] = None       # null = the official table for npoints
    use_normals: bool = False
    permute_train: bool = True            # official: train clouds re-permuted on every access
    num_workers: Optional[int] = None     # null = min(4, usable CPUs - 1): harness.train.data_workers
    val_fraction: float = 0.0             # carve a validation split out of train (seeded)
    fingerprint: Optional[str] = None     # filled when resolved: harness.fingerprint of root's files


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: Optional[float] = 10.0     # L2 over all parameters; null = off


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = 301                     # epochs run (the official loop is 0..300 inclusive)
    cosine_epochs: Optional[int] = None   # timm t_initial; null = epochs - 1 with lag, else epochs
    warmup_epochs: int = 10
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    lag: bool = True                      # scheduler.step(epoch) after the epoch (one-epoch lag)


@dataclass(frozen=True)
class VoteConfig:
    enabled: bool = False
    votes: int = 10                       # passes averaged (logits)
    repeats: int = 1                      # whole vote repeated R times, the max kept
    weights: Literal["best_test", "last"] = "best_test"   # which weights vote (official: best)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32                  # global batch, split across ranks
    eval_batch_size: int = 64
    label_smoothing: float = 0.0          # official formula: 1-eps on target, eps/(n-1) elsewhere
    amp: Literal["none", "bf16", "fp16"] = "none"   # CUDA only; ignored (noted) on CPU
    compile: bool = False                 # torch.compile, static shapes (harness.train.compile_model)
    eval_every: int = 1
    eval_start: int = 1                   # first evaluated epoch (official: 1); the last always is
    vote: VoteConfig = field(default_factory=VoteConfig)
    # scale_translate: Point-MAE's; aug_rotate_y: Point-PEFT's "-aug"; rotate_y: IDPT / PPT, one
    # y-rotation per sample; rotate_y_batch: GAPrompt, one y-rotation per batch
    augmentation: Literal["scale_translate", "aug_rotate_y", "rotate_y", "rotate_y_batch", "none"] = "scale_translate"
    seed: int = 0
    engine: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: int = 0
    deterministic: bool = True
    freeze_bn: bool = False               # BatchNorm in eval mode while training (DDP-equality tests)
    disable_dropout: bool = False         # every Dropout / DropPath off (DDP-equality tests)
    max_steps_per_epoch: Optional[int] = None   # cap steps per epoch (smoke runs); null = all


@dataclass(frozen=True)
class OutputConfig:
    runs_dir: str = "results/runs"
    tensorboard: Optional[bool] = None    # TensorBoard events in tb/; null = when tensorboard is installed
    progress: Optional[bool] = None       # tqdm bars; null = when stderr is a terminal
    keep_best: bool = True                # keep best-on-test weights (needed to vote on them)


@dataclass(frozen=True)
class DebugConfig:
    nan_loss_at_step: Optional[int] = None   # replace the loss of this global step by NaN


@dataclass(frozen=True)
class RunConfig:
    experiment: str = ""                  # a label (the experiment file's name); not hashed
    variant: str = ""                     # the recipe variant label ("" / "plain" or "aug")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    @property
    def record_variant(self) -> str:
        """The variant written to result records: the label ("plain" -> ""), else "aug" when
        the -aug transform is used, else ""."""
        if self.variant:
            return "" if self.variant == "plain" else self.variant
        return "aug" if self.train.augmentation == "aug_rotate_y" else ""

    def to_dict(self) -> dict:
        return to_dict(self)


# Dotted keys that do not change results: left out of config_hash (and so of run_id).
# data.root says where the files are, not what they are; experiment is a label.
# data.fingerprint and model.pretrained_sha256 (hashed) say what the data and the weights are.
NON_RESULT_FIELDS = ("experiment", "data.root", "data.num_workers", "output.runs_dir",
                     "output.tensorboard", "output.progress", "model.allow_random_init")
# Fields added later: left out of the hash while at their default, so earlier run ids stay.
ADDED_FIELDS = {"model.finetuned": None}


# ----------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 5e-4 / 1e6 as floats (YAML 1.2), not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                 |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                 |\.[0-9_]+(?:[eE][-+][0-9]+)?
                 |[-+]?\.(?:inf|Inf|INF)
                 |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, where: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from None


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror}") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, over: dict, sources: dict, source: str, prefix: str = "") -> dict:
    """base updated by over (mappings merge, everything else replaces); records key -> source."""
    out = dict(base)
    for key, value in over.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value, sources, source, dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
            for k in [k for k in sources if k == dotted or k.startswith(dotted + ".")]:
                del sources[k]
            _record_sources(value, dotted, sources, source)
    return out


def _record_sources(value, dotted: str, sources: dict, source: str) -> None:
    sources[dotted] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _record_sources(v, f"{dotted}.{k}", sources, source)


def load_yaml_tree(path: str | Path, _stack: tuple = ()) -> tuple[dict, dict]:
    """A file with its ``_base_`` chain merged: (raw mapping, dotted key -> file that set it)."""
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"{path}: _base_ cycle: {chain}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_: expected a path or a list of paths, got {bases!r}")
    merged: dict = {}
    sources: dict = {}
    for base in bases:
        base_path = (path.parent / base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: _base_: {base} not found (looked for {base_path})")
        tree, tree_sources = load_yaml_tree(base_path, (*_stack, path))
        merged = _deep_merge(merged, tree, sources, str(base_path.resolve()))
        sources.update(tree_sources)
        # keys set by the base file itself keep the base file as their source
    own_sources: dict = {}
    merged = _deep_merge(merged, data, own_sources, str(path))
    sources.update(own_sources)
    return merged, sources


def parse_override(item: str) -> tuple[str, Any]:
    """'a.b.c=value' -> ('a.b.c', YAML-parsed value)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{SET_SOURCE} {item!r}: expected KEY=VALUE with a dotted key, "
                          "e.g. train.seed=1")
    return key, parse_yaml(text, f"{SET_SOURCE} {key}") if text.strip() else ""


def apply_overrides(raw: dict, sources: dict, overrides: list[str] | tuple = ()) -> dict:
    """Merge ``--set`` items into a raw mapping (in place on sources)."""
    for item in overrides:
        key, value = parse_override(item)
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        raw = _deep_merge(raw, nested, sources, SET_SOURCE)
    return raw


# ----------------------------------------------------------------------------- validation

def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(args[0], "values")
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {plural}"
        return f"a list of {len(args)} {plural}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def _convert(value, tp, key: str, sources: dict):
    """value checked (and lightly coerced: int -> float, list -> tuple) against annotation tp."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return _build(tp, value, key + ".", sources)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key, sources)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
        raise _Mismatch
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            if not isinstance(value, (list, tuple)):
                raise _Mismatch
            return tuple(_convert(v, args[0], key, sources) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _Mismatch
        return tuple(_convert(v, a, key, sources) for v, a in zip(value, args))
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is dict:
        if isinstance(value, dict):
            return _plain(value)
        raise _Mismatch
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def _plain(value):
    """Free-form option mappings: lists become tuples so the config stays hashable data."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def _where(key: str, sources: dict) -> str:
    while key:
        if key in sources:
            return sources[key]
        key = key.rpartition(".")[0]
    return "<defaults>"


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    """A config dataclass's field annotations, evaluated once per class (``get_type_hints``
    compiles every string annotation on each call: most of the time of expanding a matrix)."""
    return typing.get_type_hints(cls)


def _build(cls, raw: dict, prefix: str, sources: dict):
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            dotted = f"{prefix}{key}"
            raise ConfigError(f"{_where(dotted, sources)}: unknown key {dotted!r}; valid keys under "
                              f"{prefix.rstrip('.') or 'the top level'}: {', '.join(names)}")
    values = {}
    for name in names:
        if name not in raw:
            continue
        dotted = f"{prefix}{name}"
        try:
            values[name] = _convert(raw[name], hints[name], dotted, sources)
        except _Mismatch:
            raise ConfigError(f"{_where(dotted, sources)}: {dotted}: expected {_type_name(hints[name])}, "
                              f"got {raw[name]!r}") from None
    return cls(**values)


def _check(cond: bool, key: str, sources: dict, message: str) -> None:
    if not cond:
        raise ConfigError(f"{_where(key, sources)}: {key}: {message}")


def _resolve(cfg: RunConfig, sources: dict) -> RunConfig:
    """Semantic checks and defaults that depend on other fields (npoints, cosine length)."""
    from harness.catalog import DATASETS
    from models.classifier import BACKBONES, METHODS, backbone_config, check_geometry, default_npoints

    m, d, o, s, t = cfg.model, cfg.data, cfg.optim, cfg.schedule, cfg.train
    _check(m.backbone in BACKBONES, "model.backbone", sources,
           f"unknown backbone {m.backbone!r}; valid: {', '.join(sorted(BACKBONES))}")
    _check(m.method in METHODS, "model.method", sources,
           f"unknown method {m.method!r}; valid: {', '.join(sorted(METHODS))}")
    _check(METHODS[m.method].supports(m.backbone) or m.backbone not in BACKBONES, "model.method", sources,
           f"method {m.method!r} has no recipe for backbone {m.backbone!r}; it supports "
           f"{', '.join(METHODS[m.method].backbones)}")
    _check(bool(d.dataset), "data.dataset", sources, f"required; one of {', '.join(DATASETS)}")
    _check(d.dataset in DATASETS, "data.dataset", sources,
           f"unknown dataset {d.dataset!r}; valid: {', '.join(DATASETS)}")
    _check(bool(d.root), "data.root", sources, "required: the folder holding the dataset files")
    _check(not d.use_normals, "data.use_normals", sources,
           "true is not supported: the backbones read xyz only")
    npoints = d.npoints if d.npoints is not None else default_npoints(m.backbone, DATASETS[d.dataset].family)
    _check(npoints > 0, "data.npoints", sources, f"must be positive, got {npoints}")
    try:   # backbone options: types, sizes, and groups that fit the input points
        bcfg = backbone_config(m.backbone, 1, DATASETS[d.dataset].family, **m.backbone_options)
        check_geometry(m.backbone, bcfg, npoints)
    except ConfigError as err:
        raise ConfigError(f"{_where('model.backbone_options', sources)}: model.backbone_options: {err}") from None
    point_all = d.point_all
    if point_all is None:
        _check(npoints in POINT_ALL, "data.npoints", sources,
               f"{npoints} has no official point_all ({sorted(POINT_ALL)}); set data.point_all")
        point_all = POINT_ALL[npoints]
    _check(point_all >= npoints, "data.point_all", sources, f"must be >= npoints ({npoints}), got {point_all}")
    _check(d.num_workers is None or d.num_workers >= 0, "data.num_workers", sources, "must be >= 0 or null")
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", sources, "must be in [0, 1)")
    _check(o.lr > 0, "optim.lr", sources, "must be > 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", sources, "must be >= 0")
    _check(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", sources, "must be > 0 or null")
    _check(s.epochs >= 1, "schedule.epochs", sources, "must be >= 1")
    _check(s.warmup_epochs >= 0, "schedule.warmup_epochs", sources, "must be >= 0")
    cosine = s.cosine_epochs if s.cosine_epochs is not None else (s.epochs - 1 if s.lag else s.epochs)
    _check(cosine >= 1, "schedule.cosine_epochs", sources, f"must be >= 1 (resolved to {cosine})")
    _check(t.batch_size >= 1 and t.eval_batch_size >= 1, "train.batch_size", sources, "batch sizes must be >= 1")
    _check(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", sources, "must be in [0, 1)")
    _check(t.eval_every >= 1, "train.eval_every", sources, "must be >= 1")
    _check(t.eval_start >= 0, "train.eval_start", sources, "must be >= 0")
    _check(t.vote.votes >= 1 and t.vote.repeats >= 1, "train.vote", sources, "votes and repeats must be >= 1")
    _check(not (t.compile and t.engine == "deepspeed"), "train.compile", sources,
           "true is not supported with train.engine: deepspeed (the DeepSpeed engine wraps the uncompiled "
           "model); set train.compile: false or train.engine: ddp")
    _check(t.zero_stage in (0, 1, 2, 3), "train.zero_stage", sources, f"must be 0..3, got {t.zero_stage}")
    _check(t.max_steps_per_epoch is None or t.max_steps_per_epoch >= 1, "train.max_steps_per_epoch",
           sources, "must be >= 1 or null")
    for key in ("bank_path",):
        value = m.method_options.get(key)
        _check(value is None or isinstance(value, str), f"model.method_options.{key}", sources,
               f"expected a path string, got {value!r}")
    _check(m.method == "full" or m.pretrained is not None or m.allow_random_init, "model.pretrained", sources,
           f"{m.method} tunes a few tensors on a frozen backbone, which here would be random: set "
           "model.pretrained to the released checkpoint (or model.allow_random_init: true for a pipeline test)")
    from harness import fingerprint
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(m, pretrained_sha256=m.pretrained_sha256 or fingerprint.weights_sha256(
            None if m.pretrained is None else resolve_path(m.pretrained))),
        data=dataclasses.replace(d, npoints=npoints, point_all=point_all,
                                 fingerprint=d.fingerprint or fingerprint.data_fingerprint(resolve_path(d.root))),
        schedule=dataclasses.replace(s, cosine_epochs=cosine))


def build_config(raw: dict, sources: dict | None = None) -> RunConfig:
    """Validate a raw mapping into a resolved RunConfig (unknown keys / bad types fail)."""
    sources = sources or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a run config must be a mapping, got {type(raw).__name__}")
    return _resolve(_build(RunConfig, raw, "", sources), sources)


def load_config(path: str | Path, overrides: list[str] | tuple = ()) -> RunConfig:
    """Read ``path`` (with its ``_base_`` chain), apply ``--set`` overrides, validate."""
    raw, sources = load_yaml_tree(path)
    raw = apply_overrides(raw, sources, overrides)
    return build_config(raw, sources)


class ConfigTree(dict):
    """A raw (unvalidated) config mapping that remembers which file set each dotted key."""

    def __init__(self, data: dict, sources: dict):
        super().__init__(data)
        self.sources = dict(sources)


def load_yaml(path: str | Path) -> ConfigTree:
    """A config file with its ``_base_`` chain merged, not yet validated."""
    raw, sources = load_yaml_tree(path)
    return ConfigTree(raw, sources)


def resolve(raw: dict, overrides: dict | list | tuple | None = None, source: str = SET_SOURCE) -> RunConfig:
    """Validate ``raw`` (e.g. from ``load_yaml``) with overrides merged over it.

    ``overrides`` is a mapping of dotted keys to values (errors name ``source``) or a list of
    ``KEY=VALUE`` strings (parsed as ``--set`` items).
    """
    sources = dict(getattr(raw, "sources", {}))
    tree = copy.deepcopy(dict(raw))
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
                raise ConfigError(f"{source}: bad override key {key!r}: expected a dotted key such as train.seed")
            nested: Any = value
            for part in reversed(key.split(".")):
                nested = {part: nested}
            tree = _deep_merge(tree, nested, sources, source)
    elif overrides:
        tree = apply_overrides(tree, sources, list(overrides))
    return build_config(tree, sources)


def config_from_dict(raw: dict) -> RunConfig:
    """A RunConfig from a plain mapping (e.g. the ``config`` of a result record)."""
    return build_config(copy.deepcopy(raw), {})


# ----------------------------------------------------------------------------- identity

def to_dict(cfg) -> dict:
    """Plain JSON-able data (new containers: dataclasses and dicts become dicts, tuples lists);
    what ``dataclasses.asdict`` gives, without its deep copy of every leaf (a run id needs this
    three times per run of a matrix)."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return v
    return plain(cfg)


def _drop(tree: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        tree = tree.get(p, {})
    tree.pop(last, None)


def canonical_json(cfg: RunConfig) -> str:
    """The config as canonical JSON (sorted keys, no spaces) minus NON_RESULT_FIELDS."""
    tree = to_dict(cfg)
    for dotted in NON_RESULT_FIELDS:
        _drop(tree, dotted)
    for dotted, default in ADDED_FIELDS.items():
        section, key = dotted.split(".")
        if tree[section].get(key) == default:
            _drop(tree, dotted)
    return json.dumps(tree, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(cfg: RunConfig) -> str:
    """sha256 (hex) of ``canonical_json(cfg)``."""
    return hashlib.sha256(canonical_json(cfg).encode()).hexdigest()


def run_id(cfg: RunConfig, hash_chars: int = 10) -> str:
    """Readable prefix backbone-method-dataset-s<seed> plus a short config hash."""
    prefix = f"{cfg.model.backbone}-{cfg.model.method}-{cfg.data.dataset}-s{cfg.train.seed}"
    return f"{prefix}-{config_hash(cfg)[:hash_chars]}"


def resolve_path(path: str | Path, base: Path = REPO) -> Path:
    """A config path at use time: absolute stays, relative is taken under the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def run_dir(cfg: RunConfig) -> Path:
    return resolve_path(cfg.output.runs_dir) / run_id(cfg)


def check_paths(cfg: RunConfig) -> None:
    """Fail fast, in one line, when files the run needs are missing (before any work)."""
    root = resolve_path(cfg.data.root)
    if not root.is_dir():
        raise ConfigError(f"data.root: dataset folder not found: {root} (dataset {cfg.data.dataset}"
                          f"{'; write synthetic data with `run_all.py data synth`' if cfg.data.synthetic else ''})")
    for key in ("pretrained", "finetuned"):
        value = getattr(cfg.model, key)
        if value is not None and not resolve_path(value).is_file():
            raise ConfigError(f"model.{key}: checkpoint file not found: {resolve_path(value)}")
    bank = cfg.model.method_options.get("bank_path")
    if bank is not None and not resolve_path(bank).is_file():
        raise ConfigError(f"model.method_options.bank_path: memory bank file not found: {resolve_path(bank)}")
