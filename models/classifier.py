"""Build a classifier = backbone + PEFT method + head from a small config, and mark what trains.

This is the one place that decides trainability: ``full`` trains everything; a PEFT method
(see ``models.peft``) inserts its modules and names the tensors it tunes.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable

from torch import nn

from models.backbones.point_mae import PointMAE, PointMAEConfig
from models.errors import ConfigError

# Per backbone: its config class, model class, and the official geometry per dataset family
# ("scan" = ScanObjectNN recipes, "modelnet" = ModelNet40 1k recipes).
BACKBONES: dict[str, dict[str, Any]] = {
    "point_mae": {
        "config": PointMAEConfig,
        "model": PointMAE,
        "presets": {"scan": {"num_group": 128, "group_size": 32},
                    "modelnet": {"num_group": 64, "group_size": 32}},
        "npoints": {"scan": 2048, "modelnet": 1024},
    },
}

FAMILIES = ("scan", "modelnet")


def _apply_full(model: nn.Module, options: dict) -> nn.Module:
    """Full fine-tuning: every parameter trains."""
    if options:
        raise ConfigError(f"method 'full' takes no options, got {sorted(options)}")
    for p in model.parameters():
        p.requires_grad_(True)
    return model


METHODS: dict[str, Callable[[nn.Module, dict], nn.Module]] = {"full": _apply_full}


def choose(kind: str, name: str, valid) -> str:
    """Return name if valid, else raise a one-line error listing the valid choices."""
    if name not in valid:
        raise ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
    return name


def backbone_config(backbone: str, num_classes: int, family: str = "scan", **overrides):
    """The backbone's config for a dataset family, with explicit overrides (unknown keys fail)."""
    entry = BACKBONES[choose("backbone", backbone, BACKBONES)]
    choose("dataset family", family, FAMILIES)
    cfg_cls = entry["config"]
    valid = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"unknown {backbone} option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    values = {**entry["presets"][family], **overrides, "num_classes": int(num_classes)}
    return cfg_cls(**values)


def build_model(backbone: str, num_classes: int, method: str = "full", family: str = "scan",
                method_options: dict | None = None, **backbone_options) -> nn.Module:
    """Backbone for ``family`` with ``method`` applied; ``requires_grad`` marks what trains."""
    apply = METHODS[choose("method", method, METHODS)]
    cfg = backbone_config(backbone, num_classes, family, **backbone_options)
    model = BACKBONES[backbone]["model"](cfg)
    return apply(model, dict(method_options or {}))


def default_npoints(backbone: str, family: str) -> int:
    """Input points of the official recipe for this backbone and dataset family."""
    return BACKBONES[choose("backbone", backbone, BACKBONES)]["npoints"][choose("dataset family", family, FAMILIES)]
