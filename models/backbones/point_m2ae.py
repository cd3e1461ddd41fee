"""Point-M2AE fine-tuning classifier (official ``Point_M2AE_ScanObjectNN`` / ``_ModelNet40``).

A three-level hierarchy (official Point-M2AE): level 0 groups the input points into 512 patches
and embeds them with a mini-PointNet; levels 1 and 2 group the previous level's centers
(256, then 64) and *merge tokens*: the previous level's output tokens are gathered with the
kNN indices and pooled by a mini-PointNet. Each level adds its own positional MLP before every
block and restricts attention to centers closer than the level's radius. Only the 64 level-2
tokens reach the head; there is no cls token.

The forward pass is split into small methods (``group``, ``embed_level``, ``radius_mask``,
``run_level``, ``encode``, ``pool``) so that PEFT methods can override one step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from models import ops
from models.layers import (Group, MiniPointNet, TransformerEncoder, drop_path_rates, mlp_head,
                           point_encoder, pos_mlp)

POOLS = ("concat", "sum")


@dataclass(frozen=True)
class PointM2AEConfig:
    num_classes: int = 15
    num_groups: tuple[int, ...] = (512, 256, 64)
    group_sizes: tuple[int, ...] = (32, 16, 16)   # ScanObjectNN; ModelNet40 uses (16, 8, 8)
    encoder_dims: tuple[int, ...] = (96, 192, 384)
    depths: tuple[int, ...] = (5, 5, 5)
    local_radius: tuple[float, ...] = (0.32, 0.64, 1.28)  # <= 0 switches a level's mask off
    num_heads: int = 6
    drop_path_rate: float = 0.1
    # "concat": [mean over all tokens, max over tokens 1..] (ScanObjectNN class, 768 wide);
    # "sum": mean + max over all tokens (ModelNet40 class, 384 wide).
    pool: str = "concat"

    def __post_init__(self):
        for name in ("num_groups", "group_sizes", "encoder_dims", "depths", "local_radius"):
            value = tuple(getattr(self, name))  # YAML gives lists
            object.__setattr__(self, name, value)
            if len(value) != len(self.num_groups):
                raise ValueError(f"Point-M2AE {name} has {len(value)} levels, num_groups has "
                                 f"{len(self.num_groups)}")
        if self.pool not in POOLS:
            raise ValueError(f"Point-M2AE pool {self.pool!r} is not one of {POOLS}")


class Level(NamedTuple):
    """One level of the hierarchy: centers (B,G,3), kNN indices (B,G,K) into the previous
    level (input points for level 0, previous centers / tokens above), and the neighbours'
    coordinates relative to their center (B,G,K,3)."""
    center: torch.Tensor
    idx: torch.Tensor
    neighborhood: torch.Tensor


class HEncoder(nn.Module):
    """Container of the per-level modules, named as the official ``h_encoder``."""

    def __init__(self, cfg: PointM2AEConfig):
        super().__init__()
        dims = cfg.encoder_dims
        self.token_embed = nn.ModuleList(
            [point_encoder(dims[0])] +
            [MiniPointNet(dims[l - 1], dims[l - 1], dims[l - 1], dims[l], dims[l]) for l in range(1, len(dims))])
        self.encoder_pos_embeds = nn.ModuleList(pos_mlp(3, d, d) for d in dims)
        rates = drop_path_rates(cfg.drop_path_rate, sum(cfg.depths))
        starts = [sum(cfg.depths[:l]) for l in range(len(dims))]
        self.encoder_blocks = nn.ModuleList(
            TransformerEncoder(d, depth, cfg.num_heads, rates[s:s + depth])
            for d, depth, s in zip(dims, cfg.depths, starts))


class PointM2AE(nn.Module):
    """(B, N, 3) points -> (B, num_classes) logits."""

    def __init__(self, cfg: PointM2AEConfig = PointM2AEConfig()):
        super().__init__()
        self.cfg = cfg
        self.group_dividers = nn.ModuleList(
            Group(g, k, knn="stable") for g, k in zip(cfg.num_groups, cfg.group_sizes))
        self.h_encoder = HEncoder(cfg)
        dim = cfg.encoder_dims[-1]
        self.norm = nn.LayerNorm(dim)
        self.cls_head_finetune = mlp_head(2 * dim if cfg.pool == "concat" else dim, cfg.num_classes)

    @property
    def num_levels(self) -> int:
        return len(self.cfg.num_groups)

    def group(self, pts: torch.Tensor) -> list[Level]:
        """Multi-scale grouping: level 0 on the points, level l on level l-1's centers."""
        levels, xyz = [], pts
        for divider in self.group_dividers:
            neighborhood, center, idx = divider(xyz)
            levels.append(Level(center, idx, neighborhood))
            xyz = center
        return levels

    def embed_level(self, l: int, level: Level, prev: torch.Tensor | None) -> torch.Tensor:
        """Tokens (B, G_l, d_l): a mini-PointNet over the patch coordinates at level 0, over the
        gathered previous-level tokens ``prev`` (B, G_{l-1}, d_{l-1}) above (token merging)."""
        if l == 0:
            return self.h_encoder.token_embed[0](level.neighborhood)
        return self.h_encoder.token_embed[l](ops.gather_points(prev, level.idx))

    def radius_mask(self, l: int, center: torch.Tensor) -> torch.Tensor | None:
        """Boolean (B, G, G), True = may attend: centers closer than the level's radius.

        The official code adds -1e5 to the logits where ``cdist >= r``; in fp32 that weight
        underflows to exactly 0, so it is this hard mask. cdist keeps its default compute mode
        (matmul for > 25 points), as the official code does.
        """
        radius = self.cfg.local_radius[l]
        if radius <= 0:
            return None
        return torch.cdist(center, center, p=2) < radius

    def run_level(self, l: int, x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """The level's blocks, its positional MLP re-added before each, under its radius mask."""
        pos = self.h_encoder.encoder_pos_embeds[l](center)
        return self.h_encoder.encoder_blocks[l](x, pos, self.radius_mask(l, center))

    def encode_levels(self, pts: torch.Tensor) -> list[tuple[torch.Tensor, Level]]:
        """Every level's output tokens with its grouping, coarsest last."""
        out, x = [], None
        for l, level in enumerate(self.group(pts)):
            x = self.run_level(l, self.embed_level(l, level, x), level.center)
            out.append((x, level))
        return out

    def encode(self, pts: torch.Tensor) -> torch.Tensor:
        """The last level's tokens (B, 64, 384): all that the classifier sees."""
        return self.encode_levels(pts)[-1][0]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, then the family's pooling (see ``PointM2AEConfig.pool``)."""
        x = self.norm(x)
        if self.cfg.pool == "concat":  # token 0 is left out of the max, as in the official code
            return torch.cat([x.mean(dim=1), x[:, 1:].max(dim=1).values], dim=-1)
        return x.mean(dim=1) + x.max(dim=1).values

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        return self.cls_head_finetune(self.pool(self.encode(pts)))
