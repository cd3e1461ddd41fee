"""Adapter: AdaptFormer's parallel bottleneck adapter (Chen et al., NeurIPS 2022) in every block.

Block forward (AdaptFormer ``ffn_option: parallel``): x1 = x + DP(Attn(LN1 x)), then
x2 = x1 + DP(MLP(LN2 x1)) + s * up(Dropout(ReLU(down(x1)))). The adapter reads the residual
stream x1 (not LN2 x1), has no LayerNorm of its own (AdaptFormer ``ffn_adapter_layernorm_option:
none``), scale s = 0.1, dropout 0.1, bottleneck r = 64; init as AdaptFormer's "lora" option:
down kaiming_uniform(a=sqrt 5), up and both biases zero (the block starts as the backbone's).
Names: ``blocks.blocks.i.adaptmlp.{down_proj,up_proj}.{weight,bias}`` (AdaptFormer's).
Trains the adapters, cls token and position, head. No 3D repository runs it: the published
"Adapter 0.9M" matches r = 64 on 12 blocks + the linear-probe set, 863,503 [inferred].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.errors import ConfigError
from models.layers import Block
from models.peft.base import HEAD_AND_CLS, Method, mark_trainable, name_has, parse_options
from models.peft.shared import blocks


@dataclass(frozen=True)
class AdapterOptions:
    bottleneck: int = 64
    scale: float = 0.1
    dropout: float = 0.1

    def check(self):
        if self.bottleneck < 1:
            raise ConfigError(f"adapter option bottleneck={self.bottleneck} is invalid: expected >= 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"adapter option dropout={self.dropout} is invalid: expected a probability in [0, 1)")


class AdaptMLP(nn.Module):
    """(.., C) -> (.., C): scale * up(Dropout(ReLU(down(x))))."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float):
        super().__init__()
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)
        self.scale, self.dropout = scale, dropout
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        for t in (self.down_proj.bias, self.up_proj.weight, self.up_proj.bias):
            nn.init.zeros_(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.dropout(torch.relu(self.down_proj(x)), self.dropout, self.training)
        return self.up_proj(h) * self.scale


class AdaptFormerBlock(Block):
    """A backbone ``Block`` (class swapped in place, modules and names kept) plus ``adaptmlp``."""

    adaptmlp: AdaptMLP

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), mask))
        return x + self.drop_path(self.mlp(self.norm2(x))) + self.adaptmlp(x)


def apply_adapter(model: nn.Module, options: dict) -> nn.Module:
    opts = parse_options(AdapterOptions, options, "adapter")
    for block in blocks(model):
        block.__class__ = AdaptFormerBlock
        block.adaptmlp = AdaptMLP(block.norm1.normalized_shape[0], opts.bottleneck, opts.scale, opts.dropout)
    return mark_trainable(model, name_has(*HEAD_AND_CLS, "adaptmlp"))


METHODS = [Method(
    name="adapter", display="Adapter (AdaptFormer)", order=40, apply=apply_adapter, definition="inferred",
    paper="Chen et al., AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition, NeurIPS 2022",
    code="ShoufaChen/AdaptFormer (image); no 3D code",
    backbones={"point_mae": "port", "point_bert": "port", "point_m2ae": "port"},
    doc="docs/methods/adapter.md")]
