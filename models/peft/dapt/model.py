"""DAPT on Point-MAE (official) and Point-BERT (paper row, our port): the model.

LMD0311/DAPT models/DAPT.py@41aa0bc: ``PointTransformer_DAPT`` L230-422, Block L133-171,
``Adapter_MLP`` L174-227, SSF (``tfts``) L446-461. Block l (``DAPTBlock``):
  x1 = x + DP(Attn(SSF1(LN1 x)))        (SSF also on qkv's output and on proj's, in ``attn``)
  z  = SSF2(LN2 x1)
  a  = Adapter(z)                        (dynamic scale s = ReLU(scale(LNa z)) per token)
  x2 = x1 + DP(MLP(z) + a)              (SSF after fc1 and fc2, in ``mlp``)
  q  = SSF3(mean over tokens of GELU(a))  -> inserted right after cls: one token longer.
Model: SSF on the patch tokens, [cls; tokens] + pos (once, in faithful mode), the blocks, the
final LN then SSF, and the head on the chosen pooled parts.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from models.layers import Block, mlp_head
from models.peft.shared import (FrozenBNStatsMixin, add_scale_shift, adopt_stem, patch_embedding,
                                scale_shift_output)


class AdapterMLP(nn.Module):
    """DAPT's dynamic adapter (official ``Adapter_MLP``): z (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, rank: int, dropout: float):
        super().__init__()
        self.adapter_layer_norm_before = nn.LayerNorm(dim)
        self.scale = nn.Linear(dim, 1)
        self.down_proj = nn.Linear(dim, rank)
        self.up_proj = nn.Linear(rank, dim)
        self.dropout = dropout
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.scale.weight, a=math.sqrt(5))
        for t in (self.down_proj.bias, self.up_proj.weight, self.up_proj.bias, self.scale.bias):
            nn.init.zeros_(t)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.adapter_layer_norm_before(z)
        s = F.relu(self.scale(h))
        a = F.dropout(F.gelu(self.down_proj(h)), self.dropout, self.training)
        return self.up_proj(a) * s


class DAPTBlock(Block):
    """A backbone ``Block`` (class swapped in place; its names stay) with DAPT's SSF pairs, its
    ``Adapter_MLP`` and the internal prompt. ``prompt_source``: which tokens the prompt's mean
    runs over ("all": every token present, official; "points": the G point tokens)."""

    Adapter_MLP: AdapterMLP
    prompt_source: str
    num_points: int

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x) * self.tfts_gamma_1 + self.tfts_beta_1, mask))
        z = self.norm2(x) * self.tfts_gamma_2 + self.tfts_beta_2
        a = self.Adapter_MLP(z)
        x = x + self.drop_path(self.mlp(z) + a)
        act = F.gelu(a)
        if self.prompt_source == "points":
            act = act[:, -self.num_points:]
        prompt = act.mean(dim=1, keepdim=True) * self.tfts_gamma_3 + self.tfts_beta_3
        return torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)


def make_dapt_block(block: Block, rank: int, dropout: float, prompt_source: str, num_points: int) -> DAPTBlock:
    dim = block.norm1.normalized_shape[0]
    block.__class__ = DAPTBlock
    for i in (1, 2, 3):
        add_scale_shift(block, i, dim)
    scale_shift_output(block.attn.qkv, block.attn, 1, block.attn.qkv.out_features)
    scale_shift_output(block.attn.proj, block.attn, 2, block.attn.proj.out_features)
    scale_shift_output(block.mlp.fc1, block.mlp, 1, block.mlp.fc1.out_features)
    scale_shift_output(block.mlp.fc2, block.mlp, 2, block.mlp.fc2.out_features)
    block.Adapter_MLP = AdapterMLP(dim, rank, dropout)
    block.prompt_source, block.num_points = prompt_source, num_points
    return block


class DAPT(FrozenBNStatsMixin, nn.Module):
    """(B, N, 3) points -> (B, num_classes) logits."""

    def __init__(self, backbone: nn.Module, opts):
        super().__init__()
        cfg = backbone.cfg
        self.cfg, self.opts = cfg, opts
        dim = cfg.trans_dim
        adopt_stem(self, backbone)
        add_scale_shift(self, 1, dim)
        add_scale_shift(self, 2, dim)
        self.blocks = backbone.blocks
        for block in self.blocks.blocks:
            make_dapt_block(block, opts.rank, opts.adapter_dropout, opts.prompt_source, cfg.num_group)
        self.norm = backbone.norm
        batch_norm = isinstance(backbone.cls_head_finetune[1], nn.BatchNorm1d)
        self.cls_head_finetune = mlp_head(dim * len(opts.head_tokens), cfg.num_classes, batch_norm=batch_norm)
        self._embed = backbone.__class__.embed  # the backbone's own tokenizer (group, encode, pos)
        self._tokens_hook = patch_embedding(self).register_forward_hook(self._ssf_tokens)

    def _ssf_tokens(self, module, args, output):
        """Model-level SSF1 on the patch tokens (official L368)."""
        return output * self.tfts_gamma_1 + self.tfts_beta_1

    def is_tuned(self, name: str) -> bool:
        """DAPT's filter (tools/builder.py L53-60): ``cls``, ``tfts`` or ``Adapter`` in the name."""
        return "cls" in name or "tfts" in name or "Adapter" in name

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        x, pos, _ = self._embed(self, pts)
        b, g = x.shape[0], x.shape[1] - 1
        if self.opts.pos_every_block:
            for block in self.blocks.blocks:
                prompts = x.shape[1] - 1 - g  # prompts carry no position
                x = block(x + torch.cat([pos[:, :1], pos.new_zeros(b, prompts, pos.shape[2]), pos[:, 1:]], dim=1))
        else:
            x = x + pos
            for block in self.blocks.blocks:
                x = block(x)
        x = self.norm(x) * self.tfts_gamma_2 + self.tfts_beta_2
        parts = {"cls": lambda: x[:, 0], "prompt_mean": lambda: x[:, 1:-g].mean(dim=1),
                 "patch_max": lambda: x[:, -g:].max(dim=1).values}
        return self.cls_head_finetune(torch.cat([parts[t]() for t in self.opts.head_tokens], dim=-1))
