"""PPT (Positional Prompt Tuning, arXiv 2408.11567) on a frozen Point-MAE.

Source: zsc000722/PPT@8f87fb8, models/PPT.py L125-362 (``Block``, the encoder loop, the
classifier), runner tools/runner_finetune.py L46-52 (what trains).

A second grouping (``prompt_num_group`` x ``prompt_group_size``) goes through the same patch
encoder and positional MLP; its tokens are the "positional prompts", appended after the patch
tokens: [cls; G patch tokens; G_e prompts]. Three MLPs C -> 256 -> C (GELU), shared by all
blocks and owned by ``blocks`` (``prompt_mlp``, ``prompt_pos_mlp``, ``prompt_all_mlp``):
before each block x <- x + pos, the patch rows get + M_p(.), the prompt rows + M_pos(.); inside
the block M_all is a parallel adapter: x2 = x1 + DP(MLP(LN2 x1)) + M_all(x1). Head input
[cls; mean of patch tokens; mean of prompts] (3C), the head uses GELU instead of ReLU.
Trainable: names with ``cls``, ``prompt``, ``first_conv`` or ``pos_embed`` -- the pre-trained
``encoder.first_conv`` and ``pos_embed`` are unfrozen.

The defect, one option: in every official config the prompt grouping equals the patch grouping
(FPS is deterministic), so the prompts are *copies* of the patch tokens, and the encoder runs a
second time to compute them. In train mode that second pass applies the encoder BatchNorms'
running-stat update twice per step (the trainable ``first_conv.1`` and the frozen
``second_conv.1``). ``encode_prompts_separately: true`` (faithful) does that; false (default)
reuses the patch tokens whenever the prompt grouping is a prefix of the patch grouping (same
group size, G_e <= G: FPS is greedy) -- same logits, one encoder pass, one BN update.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.errors import ConfigError
from models.layers import Group, trunc_normal_
from models.peft.shared import FrozenBNStatsMixin, carry_checkpoint_identity, small_mlp

MODES = ("default", "faithful")


@dataclass(frozen=True)
class PPTOptions:
    """``prompt_num_group`` / ``prompt_group_size``: 0 = the backbone's own grouping (every
    official 1k / 2k config); ``hidden`` 256 as the official MLPs. ``encode_prompts_separately``
    unset (None) follows ``mode``."""

    mode: str = "default"
    prompt_num_group: int = 0
    prompt_group_size: int = 0
    hidden: int = 256
    encode_prompts_separately: bool | None = None

    def check(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"ppt option mode={self.mode!r} is invalid: expected one of {', '.join(MODES)}")
        if self.encode_prompts_separately is not None and not isinstance(self.encode_prompts_separately, bool):
            raise ConfigError(f"ppt option encode_prompts_separately={self.encode_prompts_separately!r} is "
                              "invalid: expected true or false")
        for name in ("prompt_num_group", "prompt_group_size", "hidden"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ppt option {name}={getattr(self, name)} is invalid: expected >= 0")

    @property
    def separate(self) -> bool:
        if self.encode_prompts_separately is not None:
            return bool(self.encode_prompts_separately)
        return self.mode == "faithful"


class PPTEncoder(nn.Module):
    """``blocks.blocks.i`` (the backbone's, adopted) and the three shared prompt MLPs."""

    def __init__(self, encoder: nn.Module, dim: int, hidden: int):
        super().__init__()
        self.blocks = encoder.blocks
        self.prompt_mlp = small_mlp(dim, hidden, dim)
        self.prompt_pos_mlp = small_mlp(dim, hidden, dim)
        self.prompt_all_mlp = small_mlp(dim, hidden, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, g: int, ge: int) -> torch.Tensor:
        for blk in self.blocks:
            x = x + pos
            x = torch.cat([x[:, :1], x[:, 1:g + 1] + self.prompt_mlp(x[:, 1:g + 1]),
                           x[:, g + 1:] + self.prompt_pos_mlp(x[:, -ge:])], dim=1)
            x = x + blk.drop_path(blk.attn(blk.norm1(x)))
            x = x + blk.drop_path(blk.mlp(blk.norm2(x))) + self.prompt_all_mlp(x)
        return x


def gelu_head(head: nn.Sequential, in_dim: int) -> nn.Sequential:
    """The backbone head with a ``in_dim`` first layer and GELU in place of ReLU (PPT L272-282);
    Linear weights trunc_normal(0.02), biases 0."""
    layers = list(head)
    first = nn.Linear(in_dim, layers[0].out_features)
    layers[0] = first
    layers = [nn.GELU() if isinstance(m, nn.ReLU) else m for m in layers]
    for m in layers:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class PPT(FrozenBNStatsMixin, nn.Module):
    """(B, N, 3) points -> (B, K) logits; Point-MAE names plus ``blocks.prompt_*_mlp``."""

    def __init__(self, backbone: nn.Module, opts: PPTOptions):
        super().__init__()
        cfg = backbone.cfg
        self.opts, self.cfg = opts, cfg
        dim = cfg.trans_dim
        self.cls_token, self.cls_pos = backbone.cls_token, backbone.cls_pos
        self.group_divider = backbone.group_divider
        self.group_divider.knn = "point_bert"       # PPT groups with Point-BERT's knn_point (§6.1)
        self.encoder = backbone.encoder
        self.pos_embed = backbone.pos_embed
        self.blocks = PPTEncoder(backbone.blocks, dim, opts.hidden)
        self.norm = backbone.norm
        self.cls_head_finetune = gelu_head(backbone.cls_head_finetune, 3 * dim)
        self.center_divider = Group(opts.prompt_num_group or cfg.num_group,
                                    opts.prompt_group_size or cfg.group_size, knn="point_bert")
        carry_checkpoint_identity(self, backbone)

    def prompt_tokens(self, pts, tokens, center):
        """The positional prompts (B, G_e, C) and their centers (B, G_e, 3)."""
        d, main = self.center_divider, self.group_divider
        if not self.opts.separate and d.group_size == main.group_size and d.num_group <= main.num_group:
            return tokens[:, :d.num_group], center[:, :d.num_group]   # FPS prefix: identical groups
        neighborhood, center_e, _ = d(pts)
        return self.encoder(neighborhood), center_e

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        neighborhood, center, _ = self.group_divider(pts)
        tokens = self.encoder(neighborhood)
        prompts, center_e = self.prompt_tokens(pts, tokens, center)
        b, g, ge = tokens.shape[0], tokens.shape[1], prompts.shape[1]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens, prompts], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center), self.pos_embed(center_e)], dim=1)
        x = self.norm(self.blocks(x, pos, g, ge))
        feat = torch.cat([x[:, 0], x[:, 1:g + 1].mean(1), x[:, g + 1:].mean(1)], dim=-1)
        return self.cls_head_finetune(feat)

    def extra_repr(self) -> str:
        return f"encode_prompts_separately={self.opts.separate}"


def is_tuned(name: str) -> bool:
    """The official filter (runner_finetune.py L46-52)."""
    return any(s in name for s in ("cls", "prompt", "first_conv", "pos_embed"))
