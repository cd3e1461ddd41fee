"""LoRA (Hu et al., ICLR 2022) on every block's ``attn.qkv`` and ``attn.proj``.

W x + b becomes W x + b + (alpha / r) * B A Dropout(x), with A (r, in) kaiming_uniform(a=sqrt 5)
and B (out, r) zero (the model starts as the backbone). Names ``attn.qkv.lora_A`` /
``attn.qkv.lora_B`` on the adapted Linear (its ``weight`` / ``bias`` keep the official names).
Trains A, B, cls token and position, head. ``model.merge()`` folds W += (alpha / r) B A into the
frozen weights and removes A and B: same logits (to float rounding), no inference overhead.
No 3D repository runs plain LoRA as a baseline; placement and rank of the published "LoRA 0.9M"
are not recoverable, so rank is an option (default 8, as PointLoRA's qkv + proj) [inferred].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.errors import ConfigError
from models.layers import Linear
from models.peft.base import HEAD_AND_CLS, Method, mark_trainable, name_has, parse_options
from models.peft.shared import blocks


@dataclass(frozen=True)
class LoRAOptions:
    rank: int = 8
    alpha: float = 8.0           # scaling = alpha / rank
    dropout: float = 0.0
    targets: tuple = ("qkv", "proj")

    def check(self):
        if self.rank < 1:
            raise ConfigError(f"lora option rank={self.rank} is invalid: expected >= 1")
        bad = [t for t in self.targets if t not in ("qkv", "proj")]
        if bad or not self.targets:
            raise ConfigError(f"lora option targets={list(self.targets)} is invalid: expected a non-empty "
                              "list of qkv, proj")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora option dropout={self.dropout} is invalid: expected a probability in [0, 1)")


class LoRALinear(Linear):
    """A block's ``models.layers.Linear`` (class swapped in place) with a low-rank update
    ``lora_B @ lora_A``; the frozen product keeps that layer's ``linear`` (oneDNN on the CPU)."""

    scaling: float
    lora_dropout: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        h = nn.functional.dropout(x, self.lora_dropout, self.training) if self.lora_dropout else x
        return out + (h @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight``; become the block's plain ``Linear`` again."""
        self.weight += (self.lora_B @ self.lora_A).to(self.weight.dtype) * self.scaling
        del self.lora_A, self.lora_B
        self.__class__ = Linear


def lora_linear(linear: nn.Linear, rank: int, alpha: float, dropout: float) -> LoRALinear:
    if type(linear) not in (Linear, nn.Linear):
        raise ConfigError(f"lora can adapt only a plain linear layer, not a {type(linear).__name__}")
    linear.__class__ = LoRALinear
    linear.lora_A = nn.Parameter(torch.empty(rank, linear.in_features))
    linear.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank))
    nn.init.kaiming_uniform_(linear.lora_A, a=math.sqrt(5))
    linear.scaling, linear.lora_dropout = alpha / rank, dropout
    return linear


def merge(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its frozen weight (in place); returns ``model``."""
    for m in list(model.modules()):
        if isinstance(m, LoRALinear):
            m.merge()
    return model


def apply_lora(model: nn.Module, options: dict) -> nn.Module:
    opts = parse_options(LoRAOptions, options, "lora")
    for block in blocks(model):
        for target in opts.targets:
            lora_linear(getattr(block.attn, target), opts.rank, opts.alpha, opts.dropout)
    model.merge = merge.__get__(model)  # the method every mergeable model offers
    return mark_trainable(model, name_has(*HEAD_AND_CLS, "lora_A", "lora_B"))


METHODS = [Method(
    name="lora", display="LoRA", order=50, apply=apply_lora, definition="inferred",
    paper="Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022",
    backbones={"point_mae": "port", "point_bert": "port", "point_m2ae": "port"},
    doc="docs/methods/lora.md")]
