"""Full fine-tuning: every parameter of the backbone trains (the reference every PEFT method is
measured against)."""
from __future__ import annotations

from torch import nn

from models.peft.base import Method, NoOptions, mark_trainable, parse_options


def apply_full(model: nn.Module, options: dict) -> nn.Module:
    """Every parameter trains; takes no options."""
    parse_options(NoOptions, options, "full")
    return mark_trainable(model, lambda name: True)


METHODS = [Method(
    name="full", display="full fine-tuning", order=0, apply=apply_full,
    paper="the backbone's own fine-tuning recipe (Point-BERT CVPR'22, Point-MAE ECCV'22, Point-M2AE NeurIPS'22)",
    backbones={"point_mae": "official", "point_bert": "official", "point_m2ae": "official"},
    doc="docs/methods/full.md")]
