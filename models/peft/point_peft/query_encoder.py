"""The frozen query encoder of the point-prior prompt (the official ``cp_model``, docs/point-peft.md §1, §2.2).

A copy of the backbone's *pre-trained* modules, taken when the method is applied (so build
the backbone from the pre-trained checkpoint first; ``PointPEFT.reset_query_encoder`` re-takes
it). It always runs in eval mode under ``no_grad`` and is kept out of the PEFT model's module
tree (see ``PointPEFT``), so it adds nothing to ``parameters()`` or ``state_dict()``.

* Point-MAE: the pre-training encoder, 64 groups x 32 points, no masking, no cls token, final
  LayerNorm, max over the tokens (docs/point-peft.md §1.1, §2.2).
* Point-BERT (no official port, docs/point-peft.md §10; our choice): the pre-trained ``transformer_q`` on the
  backbone's own grouping, with its pre-trained cls token in the sequence, final LayerNorm,
  max over the point tokens (the cls token is left out so the query is 384-d like MAE's).
* Point-M2AE: the pre-training hierarchical encoder in its eval mode (group sizes 16/8/8,
  final ``encoder_norms.2``, mean + max of the 64 level-2 tokens), including the way that eval
  mode drops level-0/1 tokens lying in no next-level neighbourhood (``M2AEQueryEncoder``).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from models import ops
from models.layers import Group

QUERY_POOLS = ("max", "mean_max")


def pool_tokens(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, G, C) -> (B, C): max, or mean + max (M2AE's cp_model)."""
    if pool == "max":
        return x.max(dim=1).values
    if pool == "mean_max":
        return x.mean(dim=1) + x.max(dim=1).values
    raise ValueError(f"query pool {pool!r} is not one of {QUERY_POOLS}")


class FrozenModule(nn.Module):
    """A module that stays in eval mode with frozen parameters whatever its owner does."""

    def freeze(self):
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True):
        return super().train(False)

    def reset(self, state: dict, strict: bool = True) -> None:
        """Load this encoder's tensors from a state dict that uses the backbone's names
        (every one must be there; ``strict`` matters only for ``M2AEQueryEncoder``)."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise KeyError(f"the source lacks {len(missing)} tensor(s) such as {missing[:3]}")
        with torch.no_grad():
            for key, value in own.items():
                value.copy_(state[key])


class TokenQueryEncoder(FrozenModule):
    """Query encoder for the Point-MAE / Point-BERT transformers. Tensor names equal the
    backbone's (``encoder.*``, ``pos_embed.*``, ``blocks.blocks.i.*``, ``norm.*`` ...)."""

    def __init__(self, backbone: nn.Module, num_group: int, group_size: int, use_cls: bool,
                 pool: str = "max"):
        super().__init__()
        if pool not in QUERY_POOLS:
            raise ValueError(f"query pool {pool!r} is not one of {QUERY_POOLS}")
        self.use_cls = use_cls
        self.pool = pool
        if use_cls:
            self.cls_token = nn.Parameter(backbone.cls_token.detach().clone())
            self.cls_pos = nn.Parameter(backbone.cls_pos.detach().clone())
        self.group_divider = Group(num_group, group_size, knn=backbone.group_divider.knn)
        self.encoder = copy.deepcopy(backbone.encoder)
        self.reduce_dim = copy.deepcopy(backbone.reduce_dim) if hasattr(backbone, "reduce_dim") else None
        self.pos_embed = copy.deepcopy(backbone.pos_embed)
        self.blocks = copy.deepcopy(backbone.blocks)
        self.norm = copy.deepcopy(backbone.norm)
        self.freeze()

    @property
    def dim(self) -> int:
        return self.norm.normalized_shape[0]

    def describe(self) -> dict:
        """Settings that change the features (recorded in and checked against memory banks)."""
        g = self.group_divider
        return {"type": "tokens", "num_group": g.num_group, "group_size": g.group_size, "knn": g.knn,
                "cls": self.use_cls, "pool": self.pool}

    def tokens(self, neighborhood: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(neighborhood)
        return self.reduce_dim(tokens) if self.reduce_dim is not None else tokens

    def from_tokens(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Pooled feature (B, C) from patch tokens and their positional embedding (B, G, C)."""
        if self.use_cls:
            b = tokens.shape[0]
            tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
            pos = torch.cat([self.cls_pos.expand(b, -1, -1), pos], dim=1)
        x = self.norm(self.blocks(tokens, pos))
        return pool_tokens(x[:, 1:] if self.use_cls else x, self.pool)

    @torch.no_grad()
    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        neighborhood, center, _ = self.group_divider(pts)
        return self.from_tokens(self.tokens(neighborhood), self.pos_embed(center))


class M2AEQueryEncoder(FrozenModule):
    """Query encoder for Point-M2AE: the official pre-training ``H_Encoder`` in eval mode.

    Eval mode masks nothing at level 2, then propagates visibility down the hierarchy: a
    level-l token takes part in level l's attention only if it lies in the kNN neighbourhood of
    a visible level-(l+1) token (with group sizes 16/8/8 some are in none). Visible tokens are
    packed to the front of each sample and the batch is zero-padded to the longest one.

    ``padding="official"`` reproduces what the official code then does: the radius mask is
    multiplied by the padding mask, so among real tokens attention is global, and a real token
    also attends to the zero padding tokens (x = 0, position (0,0,0)) whose centre is within the
    level's radius of its own, which makes a sample's feature depend on how much padding the
    *batch* needs; and a masked level-1 token marks flat token 0 (sample 0's first level-0
    token) visible. ``padding="per_sample"`` keeps the visibility rule but lets no token see
    padding and marks nothing across samples, so a sample's feature is its own.

    Tensor names follow the pre-training checkpoint (``h_encoder.token_embed.*``,
    ``h_encoder.encoder_pos_embeds.*``, ``h_encoder.encoder_blocks.*``,
    ``h_encoder.encoder_norms.*``) so ``reset`` takes either the fine-tune model's tensors or a
    pre-training state dict (which alone has ``encoder_norms``).
    """

    PADDINGS = ("official", "per_sample")

    def __init__(self, backbone: nn.Module, group_sizes, padding: str = "official"):
        super().__init__()
        if padding not in self.PADDINGS:
            raise ValueError(f"padding {padding!r} is not one of {self.PADDINGS}")
        cfg = backbone.cfg
        if len(group_sizes) != len(cfg.num_groups):
            raise ValueError(f"query_group_sizes {list(group_sizes)} needs {len(cfg.num_groups)} levels")
        self.padding = padding
        self.num_groups = tuple(cfg.num_groups)
        self.group_sizes = tuple(group_sizes)
        self.radii = tuple(cfg.local_radius)
        self.group_dividers = nn.ModuleList(Group(g, k, knn="stable") for g, k in zip(cfg.num_groups, group_sizes))
        h = nn.Module()
        h.token_embed = copy.deepcopy(backbone.h_encoder.token_embed)
        h.encoder_pos_embeds = copy.deepcopy(backbone.h_encoder.encoder_pos_embeds)
        h.encoder_blocks = copy.deepcopy(backbone.h_encoder.encoder_blocks)
        h.encoder_norms = nn.ModuleList(nn.LayerNorm(d) for d in cfg.encoder_dims)
        self.h_encoder = h
        self.freeze()

    @property
    def dim(self) -> int:
        return self.h_encoder.encoder_norms[-1].normalized_shape[0]

    def describe(self) -> dict:
        return {"type": "m2ae", "num_groups": list(self.num_groups), "group_sizes": list(self.group_sizes),
                "radii": list(self.radii), "pool": "mean_max", "padding": self.padding}

    def reset(self, state: dict, strict: bool = True) -> None:
        """Like ``FrozenModule.reset``; unless ``strict`` (a pre-training file), ``encoder_norms``
        (absent from fine-tune models) are kept when the source lacks them."""
        own = self.state_dict()
        missing = [k for k in own if k not in state and (strict or ".encoder_norms." not in k)]
        if missing:
            raise KeyError(f"the source lacks {len(missing)} tensor(s) such as {missing[:3]}")
        with torch.no_grad():
            for key, value in own.items():
                if key in state:
                    value.copy_(state[key])

    def group(self, pts: torch.Tensor) -> list:
        """[(centers (B,G,3), kNN idx (B,G,K) into the previous level, neighborhood)] per level."""
        levels, xyz = [], pts
        for divider in self.group_dividers:
            neighborhood, center, idx = divider(xyz)
            levels.append((center, idx, neighborhood))
            xyz = center
        return levels

    def visibility(self, levels: list) -> list:
        """Per level, which tokens take part (B, G_l) bool, propagated down from the top."""
        b = levels[-1][0].shape[0]
        vis = [None] * len(levels)
        vis[-1] = torch.ones(b, levels[-1][0].shape[1], dtype=torch.bool, device=levels[-1][0].device)
        for l in range(len(levels) - 1, 0, -1):
            idx = levels[l][1]
            hits = vis[l][:, :, None].expand_as(idx).reshape(b, -1).to(torch.float32)
            count = torch.zeros(b, levels[l - 1][0].shape[1], device=idx.device).scatter_add_(
                1, idx.reshape(b, -1), hits)
            below = count > 0
            if self.padding == "official" and not bool(vis[l].all()):
                below[0, 0] = True  # masked tokens' indices are zeroed, i.e. flat token 0
            vis[l - 1] = below
        return vis

    def _attend_mask(self, center: torch.Tensor, valid: torch.Tensor, radius: float):
        """Boolean attend mask (B, L, L) for packed tokens, or None for no mask."""
        pad = ~(valid[:, :, None] & valid[:, None, :])
        if not bool(pad.any()):
            return None  # no padding: radius * 0 masks nothing (official), nothing to hide
        if self.padding == "per_sample":
            eye = torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
            return ~pad | eye  # padding rows see only themselves; their output is unused
        if radius > 0:
            far = torch.cdist(center, center, p=2) >= radius
            return ~(far & pad)
        return ~pad

    def from_levels(self, levels: list) -> torch.Tensor:
        """The pooled level-2 feature (B, D) from a grouping (``group`` or the backbone's)."""
        h = self.h_encoder
        vis = self.visibility(levels)
        full = None
        for l, (center, idx, neighborhood) in enumerate(levels):
            tokens = h.token_embed[l](neighborhood if l == 0 else ops.gather_points(full, idx))
            v = vis[l]
            if bool(v.all()):
                x = h.encoder_blocks[l](tokens, h.encoder_pos_embeds[l](center), None)
                full = x
                continue
            counts = v.sum(dim=1)
            width = int(counts.max())
            order = torch.argsort((~v).to(torch.int8), dim=1, stable=True)[:, :width]
            valid = torch.arange(width, device=v.device)[None, :] < counts[:, None]
            keep = valid[..., None].to(tokens.dtype)
            xp = ops.gather_points(tokens, order) * keep
            cp = ops.gather_points(center, order) * keep
            x = h.encoder_blocks[l](xp, h.encoder_pos_embeds[l](cp), self._attend_mask(cp, valid, self.radii[l]))
            bi, pi = valid.nonzero(as_tuple=True)
            full = tokens.clone()
            full[bi, order[bi, pi]] = x[bi, pi]
        x = h.encoder_norms[-1](full)
        return x.mean(dim=1) + x.max(dim=1).values

    @torch.no_grad()
    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        return self.from_levels(self.group(pts))
