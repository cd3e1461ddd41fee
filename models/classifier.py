"""Build a classifier = backbone + PEFT method + head from a small config.

The method comes from the one registry (``models.peft.registry``): its ``apply`` inserts its
modules and marks what trains (``requires_grad``); ``full`` trains everything.
"""
from __future__ import annotations

import math
import typing
from dataclasses import fields
from typing import Any

from torch import nn

from models.backbones import NPOINTS
from models.backbones.point_bert import PointBERT, PointBERTConfig
from models.backbones.point_m2ae import PointM2AE, PointM2AEConfig
from models.backbones.point_mae import PointMAE, PointMAEConfig
from models.errors import ConfigError, choose  # noqa: F401 - choose: also models.classifier.choose
from models.peft import registry

# Per backbone: its config class, model class, and the official geometry per dataset family
# ("scan" = ScanObjectNN recipes, "modelnet" = ModelNet40 1k recipes).
BACKBONES: dict[str, dict[str, Any]] = {
    "point_mae": {
        "config": PointMAEConfig,
        "model": PointMAE,
        "presets": {"scan": {"num_group": 128, "group_size": 32},
                    "modelnet": {"num_group": 64, "group_size": 32}},
        "npoints": NPOINTS["point_mae"],
    },
    # Official Point-BERT recipe for both families: 1024 points, 64 x 32 (its ScanObjectNN cfgs
    # too). Point-PEFT's Point-BERT port would use 2048 points / 128 x 32 on ScanObjectNN
    # (docs/point-peft.md §10): override num_group / npoints for that.
    "point_bert": {
        "config": PointBERTConfig,
        "model": PointBERT,
        "presets": {"scan": {"num_group": 64, "group_size": 32},
                    "modelnet": {"num_group": 64, "group_size": 32}},
        "npoints": NPOINTS["point_bert"],
    },
    # Point-M2AE: the ScanObjectNN and ModelNet40 classes differ in kNN sizes and head pooling.
    "point_m2ae": {
        "config": PointM2AEConfig,
        "model": PointM2AE,
        "presets": {"scan": {"group_sizes": (32, 16, 16), "pool": "concat"},
                    "modelnet": {"group_sizes": (16, 8, 8), "pool": "sum"}},
        "npoints": NPOINTS["point_m2ae"],
    },
}

FAMILIES = ("scan", "modelnet")


# name -> models.peft.base.Method, in table order (the one registry; read-only here)
METHODS = registry.methods()


def backbone_config(backbone: str, num_classes: int, family: str = "scan", **overrides):
    """The backbone's config for a dataset family, with explicit overrides (unknown keys fail)."""
    entry = BACKBONES[choose("backbone", backbone, BACKBONES)]
    choose("dataset family", family, FAMILIES)
    cfg_cls = entry["config"]
    valid = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"unknown {backbone} option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    hints = typing.get_type_hints(cfg_cls)
    for key, value in overrides.items():
        _check_option(backbone, key, value, hints[key])
    values = {**entry["presets"][family], **overrides, "num_classes": int(num_classes)}
    try:
        cfg = cfg_cls(**values)
    except ValueError as err:   # the config's own consistency checks (e.g. M2AE level counts)
        raise ConfigError(f"{backbone} options: {err}") from None
    _check_sizes(backbone, cfg)
    return cfg


def _check_option(backbone: str, key: str, value, tp) -> None:
    """One backbone option against its dataclass annotation: int, float, str or a tuple of them."""
    def ok(v, t) -> bool:
        if t is int:
            return isinstance(v, int) and not isinstance(v, bool)
        if t is float:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return isinstance(v, t)
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        good = isinstance(value, (list, tuple)) and len(value) > 0 and all(ok(v, item) for v in value)
        expected = f"a list of {item.__name__}s"
    else:
        good, expected = ok(value, tp), ("a number" if tp is float else f"a {tp.__name__}")
    if not good:
        raise ConfigError(f"{backbone} option {key}: expected {expected}, got {value!r}")


def _check_sizes(backbone: str, cfg) -> None:
    """Sizes a model cannot be built or run with: non-positive counts, heads not dividing a width."""
    def positive(name: str, values) -> None:
        for v in (values if isinstance(values, tuple) else (values,)):
            if v < 1:
                raise ConfigError(f"{backbone} option {name}: must be >= 1, got {getattr(cfg, name)!r}")
    for name in ("num_group", "group_size", "trans_dim", "depth", "num_heads", "encoder_dims",
                 "num_groups", "group_sizes", "depths"):
        if hasattr(cfg, name):
            positive(name, getattr(cfg, name))
    dims = cfg.trans_dim if hasattr(cfg, "trans_dim") else cfg.encoder_dims
    for dim in (dims if isinstance(dims, tuple) else (dims,)):
        if dim % cfg.num_heads:
            raise ConfigError(f"{backbone} option num_heads: {cfg.num_heads} does not divide the "
                              f"transformer width {dim}")


def check_geometry(backbone: str, cfg, npoints: int) -> None:
    """Groups and kNN sizes must fit the points they are drawn from (``npoints`` input points;
    for Point-M2AE, level l groups the centres of level l-1)."""
    if hasattr(cfg, "num_groups"):
        levels = list(zip(cfg.num_groups, cfg.group_sizes))
        sizes = [npoints, *cfg.num_groups[:-1]]
        names = ("num_groups", "group_sizes")
    else:
        levels, sizes, names = [(cfg.num_group, cfg.group_size)], [npoints], ("num_group", "group_size")
    for level, ((groups, k), available) in enumerate(zip(levels, sizes)):
        what = "input points" if level == 0 else f"level-{level - 1} centres"
        if groups > available:
            raise ConfigError(f"{backbone} option {names[0]}: {groups} groups need at least {groups} "
                              f"{what}, got {available}")
        if k > available:
            raise ConfigError(f"{backbone} option {names[1]}: {k} neighbours need at least {k} "
                              f"{what}, got {available}")


def build_model(backbone: str, num_classes: int, method: str = "full", family: str = "scan",
                method_options: dict | None = None, pretrained: str | None = None,
                **backbone_options) -> nn.Module:
    """Backbone for ``family`` with ``method`` applied; ``requires_grad`` marks what trains.

    ``pretrained``: an official pre-training checkpoint, loaded into the backbone *before* the
    method is applied (Point-PEFT copies its frozen query encoder from those weights); its
    sha256 and path are kept as ``checkpoint_sha256`` / ``checkpoint_path`` on the backbone.
    """
    spec = registry.get(method)
    if not spec.supports(backbone) and backbone in BACKBONES:
        raise ConfigError(f"method {method!r} has no recipe for backbone {backbone!r}; it supports "
                          f"{', '.join(spec.backbones)}")
    cfg = backbone_config(backbone, num_classes, family, **backbone_options)
    model = BACKBONES[backbone]["model"](cfg)
    if pretrained is not None:
        from models.checkpoints import load_checkpoint
        model.checkpoint_sha256 = load_checkpoint(model, pretrained, backbone, kind="pretrain").sha256
        model.checkpoint_path = str(pretrained)
    return spec.apply(model, dict(method_options or {}))


def default_npoints(backbone: str, family: str) -> int:
    """Input points of the official recipe for this backbone and dataset family."""
    return BACKBONES[choose("backbone", backbone, BACKBONES)]["npoints"][choose("dataset family", family, FAMILIES)]
