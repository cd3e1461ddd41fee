"""Linear probe: the frozen backbone with a trained head, cls token and cls position.

As IDPT's ``part: only_new`` filter defines it (zyh16143998882/ICCV23-IDPT tools/builder.py
L48-55, "only the newly added classifier is learned"): every parameter whose name contains
``cls``, i.e. ``cls_token``, ``cls_pos`` and the whole 3-layer MLP head ``cls_head_finetune``
(not a single Linear). 268,303 trainable on Point-MAE with 15 classes, 274,728 with 40.
Point-M2AE has no cls token: only its head trains.
"""
from __future__ import annotations

from torch import nn

from models.peft.base import HEAD_AND_CLS, Method, NoOptions, mark_trainable, name_has, parse_options


def apply_linear_probe(model: nn.Module, options: dict) -> nn.Module:
    parse_options(NoOptions, options, "linear_probe")
    return mark_trainable(model, name_has(*HEAD_AND_CLS))


METHODS = [Method(
    name="linear_probe", display="Linear probe", order=10, apply=apply_linear_probe,
    paper="the 'only_new' filter of IDPT (Zha et al., ICCV 2023); baseline rows in GAPrompt (ICML 2025)",
    code="zyh16143998882/ICCV23-IDPT@bf152f2 (tools/builder.py L48-55)",
    backbones={"point_mae": "official", "point_bert": "port", "point_m2ae": "port"},
    doc="docs/methods/linear_probe.md")]
