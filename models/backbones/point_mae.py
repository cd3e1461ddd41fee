"""Point-MAE fine-tuning classifier (the official ``PointTransformer`` of Point-MAE).

Tokens are mini-PointNet embeddings of FPS/kNN patches; a cls token leads the sequence;
the positional embedding of the patch centers is re-added before every one of the 12
blocks; the head reads [cls, max over patch tokens]. Parameter names equal the official
fine-tune state dict, so ``load_state_dict`` takes official files after key remapping.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.layers import (DEFAULT_RECOMPUTE, Group, TransformerEncoder, drop_path_rates, mlp_head, point_encoder,
                           pos_mlp, set_recompute, trunc_normal_)


@dataclass(frozen=True)
class PointMAEConfig:
    num_classes: int = 15
    num_group: int = 128
    group_size: int = 32
    trans_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    encoder_dims: int = 384
    drop_path_rate: float = 0.1
    # memory lever, not an official field: models.layers.RECOMPUTE_MODES (same numbers either way)
    recompute: str = DEFAULT_RECOMPUTE


class PointMAE(nn.Module):
    """(B, N, 3) points -> (B, num_classes) logits."""

    def __init__(self, cfg: PointMAEConfig = PointMAEConfig()):
        super().__init__()
        self.cfg = cfg
        dim = cfg.trans_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim))
        self.group_divider = Group(cfg.num_group, cfg.group_size, knn="stable")
        self.encoder = point_encoder(cfg.encoder_dims)
        self.pos_embed = pos_mlp(3, 128, dim)
        self.blocks = TransformerEncoder(dim, cfg.depth, cfg.num_heads,
                                         drop_path_rates(cfg.drop_path_rate, cfg.depth))
        self.norm = nn.LayerNorm(dim)
        self.cls_head_finetune = mlp_head(2 * dim, cfg.num_classes, batch_norm=True)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.cls_pos, std=0.02)
        set_recompute(self, cfg.recompute)

    def embed(self, pts: torch.Tensor):
        """Patch tokens with the cls token in front: x, pos (B, G+1, C) and centers (B, G, 3)."""
        neighborhood, center, _ = self.group_divider(pts)
        tokens = self.encoder(neighborhood)
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center)], dim=1)
        return x, pos, center

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, then [cls, max over patch tokens] (B, 2C)."""
        x = self.norm(x)
        return torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        x, pos, _ = self.embed(pts)
        x = self.blocks(x, pos)
        return self.cls_head_finetune(self.pool(x))
