"""Point-PEFT on Point-M2AE (docs/point-peft.md §1.2, §5): three stages, prompts in every block.

Per stage l (widths 96 / 192 / 384, G = 512 / 256 / 64 tokens, no cls token) every block
inserts 16 prompt tokens in front, [P; x]; only the last stage's blocks add the cache prompt.
Attention keeps the backbone's radius mask; the MLP branch is gated, z + ad_gate * adapter(m)
with a residual adapter and ad_gate starting at 0. The geometric adapter of stage l uses the
prompt-augmented hierarchy (grouping of [prompt_cor; points]) in faithful mode, and per-sample
geometry over [prompt_cor; centers_l] in fixed mode.

Names are the official Point-PEFT M2AE model's (``M2AE/models/Point_Mask_Rev_FT_scan.py``), down
to the leaf: ``encoders.{0,1,2}`` (Point-M2AE's ``h_encoder.token_embed``), ``pos_embeds.{0,1,2}``
(``h_encoder.encoder_pos_embeds``), ``blocks.{s}.blocks.{j}`` (``h_encoder.encoder_blocks``) with
``blocks.{s}.attn1`` / ``norm3``, ``norm``, ``prompt_cor``, ``cls_head_finetune``. A Point-M2AE
pre-training file loads through ``models.checkpoints.M2AE_PEFT_NAMES``.

Readout (official ``concat_f``): final LayerNorm, then concat(mean over all tokens, max over
all tokens), 768 wide. Unlike Point-M2AE's own ScanObjectNN head, token 0 takes part in the
max. With the ModelNet40 head (``pool="sum"``, 384 wide) it is mean + max over all tokens.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from models import ops
from models.backbones.point_m2ae import PointM2AE
from models.checkpoints import M2AE_PEFT_NAMES
from models.errors import ConfigError
from models.peft.point_peft.geometric_adapter import group_indices, idw_weights, make_geometry
from models.peft.point_peft.options import resolve_options
from models.peft.point_peft.model import PEFTEncoder, PointPEFT
from models.peft.point_peft.query_encoder import M2AEQueryEncoder


class PointPEFTM2AE(PointPEFT):
    """Point-PEFT around a ``PointM2AE`` classifier, under the official Point-PEFT names."""

    checkpoint_prefixes = M2AE_PEFT_NAMES   # a Point-M2AE pre-training file's names -> ours

    def __init__(self, backbone: PointM2AE, options: dict | None = None):
        super().__init__()
        cfg = backbone.cfg
        self.kind = "m2ae"
        self.cfg = cfg
        depths = list(cfg.depths)
        depth = sum(depths)
        self.starts = [sum(depths[:l]) for l in range(len(depths))]
        o = resolve_options(options, "m2ae", depth)
        last = list(range(self.starts[-1], depth))
        if o.cache_layers is None:
            o = replace(o, cache_layers=tuple(last))
        if o.geo_num_centers is None:
            o = replace(o, geo_num_centers=tuple(cfg.num_groups[1:]) + (cfg.num_groups[-1] // 2,))
        elif isinstance(o.geo_num_centers, int):
            o = replace(o, geo_num_centers=(o.geo_num_centers,) * len(depths))
        if len(o.geo_num_centers) != len(depths):
            raise ConfigError(f"point_peft geo_num_centers {list(o.geo_num_centers)} needs one value per stage "
                              f"({len(depths)})")
        if o.geo_indexing == "official" and tuple(o.geo_num_centers[:-1]) != tuple(cfg.num_groups[1:]):
            raise ConfigError("point_peft geo_num_centers of stages 0..n-2 are the next stage's group counts "
                              f"{list(cfg.num_groups[1:])} with geo_indexing=official")
        self.opts = o
        self.checkpoint_sha256 = getattr(backbone, "checkpoint_sha256", None)
        self._set_query_encoder(M2AEQueryEncoder(
            backbone, o.query_group_sizes, padding=o.query_padding))
        # backbone modules under the official Point-PEFT names; the stages become PEFT stages
        self.group_dividers = backbone.group_dividers
        self.encoders = backbone.h_encoder.token_embed
        self.pos_embeds = backbone.h_encoder.encoder_pos_embeds
        prompt_set, cache_set = set(o.prompt_blocks(depth)), set(o.cache_blocks(depth))
        self.blocks = nn.ModuleList(
            PEFTEncoder(enc, dim, self.starts[l], o, prompt_set=prompt_set, cache_set=cache_set,
                        own_prompt_set=prompt_set, own_cache_set=cache_set,
                        own_gate=o.mlp_adapter_mode == "gated" or o.unused_params == "keep",
                        query_dim=self.query_dim)
            for l, (enc, dim) in enumerate(zip(backbone.h_encoder.encoder_blocks, cfg.encoder_dims)))
        self.norm = backbone.norm
        self.cls_head_finetune = backbone.cls_head_finetune
        self._add_prompt_coords(o, prompt_set)
        self._register_bank()
        self.mark_trainable()
        self.train()

    # the backbone's own steps that use no module names, run on this module
    group = PointM2AE.group
    radius_mask = PointM2AE.radius_mask

    @property
    def stages(self):
        return self.blocks

    def backbone_state(self) -> dict:
        """This model's backbone tensors under Point-M2AE's names (``h_encoder.*``), e.g. for
        the query encoder."""
        back = {new: old for old, new in M2AE_PEFT_NAMES}
        out = {}
        for key, value in self.state_dict().items():
            prefix = next((p for p in back if key.startswith(p)), None)
            if prefix is not None:
                out[back[prefix] + key[len(prefix):]] = value
        return out

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G, C) last-stage tokens -> (B, 2C) ``concat(mean, max)`` over ALL tokens after
        the final LayerNorm (official ``concat_f``), or (B, C) mean + max for a 384-wide head."""
        x = self.norm(x)
        if self.cfg.pool == "concat":
            return torch.cat([x.mean(dim=1), x.max(dim=1).values], dim=-1)
        return x.mean(dim=1) + x.max(dim=1).values

    @torch.no_grad()
    def _query_from_levels(self, pts: torch.Tensor, levels) -> torch.Tensor:
        """The query, reusing the backbone's grouping: FPS is greedy and the kNN order stable,
        so the query's 16/8/8-neighbourhoods are prefixes of the backbone's 32/16/16 ones."""
        q = self.query_encoder
        if q.num_groups != tuple(self.cfg.num_groups) or any(
                kq > lv.idx.shape[-1] for kq, lv in zip(q.group_sizes, levels)):
            return q(pts)
        return q.from_levels([(lv.center, lv.idx[..., :kq], lv.neighborhood[:, :, :kq])
                              for kq, lv in zip(q.group_sizes, levels)])

    def prompt_hierarchy(self, pts: torch.Tensor):
        """Faithful geometry source: the grouping of [prompt_cor; points] (centers carry the
        gradient to prompt_cor). Returns per level (centers, FPS idx into the previous level,
        kNN idx into the previous level); level 0's kNN is not needed and not computed."""
        b = pts.shape[0]
        xyz = torch.cat([self.prompt_cor.unsqueeze(0).expand(b, -1, -1), pts], dim=1)
        out = []
        for l, divider in enumerate(self.group_dividers):
            with torch.no_grad():
                fidx = ops.furthest_point_sample(xyz.detach(), divider.num_group)
            center = ops.gather_points(xyz, fidx)
            knn = None
            if l > 0:
                with torch.no_grad():
                    knn = ops.knn(xyz.detach(), center.detach(), divider.group_size)[1]
            out.append((center, fidx, knn))
            xyz = center
        return out

    def geometries(self, pts: torch.Tensor, levels) -> list:
        """Per stage, (geometry of its prompt blocks, geometry of its other blocks)."""
        o = self.opts
        t = o.num_prompt_tokens
        with_prompts = hasattr(self, "prompt_cor")
        n = len(levels)
        b = pts.shape[0]
        hier = self.prompt_hierarchy(pts) if with_prompts and o.geo_indexing == "official" else None
        geos = []
        for l in range(n):
            center = levels[l].center
            g = center.shape[1]
            blocks = self.stages[l].blocks
            geo_prompt = geo_plain = None
            if with_prompts and any(blk.use_prompt for blk in blocks):
                if hier is not None:
                    # B1: positions = prompt-hierarchy centers (not the tokens' order), sub-centers =
                    # its next level with that level's kNN; indices offset b*G index [P; x]
                    positions = hier[l][0]
                    if l + 1 < n:
                        sub, fi, ki = hier[l + 1]
                    else:
                        sub, fi, ki = group_indices(positions, o.geo_num_centers[l], o.geo_k)
                    geo_prompt = make_geometry(t + g, True, fi, ki, g, idw_weights(
                        positions, sub, o.idw_distance, o.geo_interp_neighbors))
                else:
                    positions = torch.cat([self.prompt_cor.unsqueeze(0).expand(b, -1, -1), center], dim=1)
                    sub, fi, ki = group_indices(positions, o.geo_num_centers[l], o.geo_k)
                    geo_prompt = make_geometry(t + g, True, fi, ki, t + g, idw_weights(
                        center, sub, o.idw_distance, o.geo_interp_neighbors))
            if not with_prompts or any(not blk.use_prompt for blk in blocks):
                sub, fi, ki = group_indices(center, o.geo_num_centers[l], o.geo_k)
                geo_plain = make_geometry(g, False, fi, ki, g, idw_weights(
                    center, sub, o.idw_distance, o.geo_interp_neighbors))
            geos.append((geo_prompt or geo_plain, geo_plain or geo_prompt))
        return geos

    def attention_masks(self, l: int, center: torch.Tensor):
        """(mask with prompts, mask without) for stage l; True = may attend."""
        radius = self.radius_mask(l, center)
        if radius is None:
            return None, None
        b, g, _ = center.shape
        t = self.opts.num_prompt_tokens
        full = torch.ones(b, t + g, t + g, dtype=torch.bool, device=center.device)
        if self.opts.mask_alignment == "official":
            full[:, :g, :g] = radius  # B7: written top-left while the tokens sit at [t:, t:]
        else:
            full[:, t:, t:] = radius
        return full, radius

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            levels = self.group(pts)
        query = self._query_from_levels(pts, levels)
        cache = self.cache_tokens(query)
        geos = self.geometries(pts, levels)
        x = None
        for l, level in enumerate(levels):
            stem = l == 0 and not self._stem_grad(self.encoders[0])
            with torch.set_grad_enabled(torch.is_grad_enabled() and not stem):
                tokens = (self.encoders[0](level.neighborhood) if l == 0
                          else self.encoders[l](ops.gather_points(x, level.idx)))
            with torch.set_grad_enabled(self._stem_grad(self.pos_embeds[l])):
                pos = self.pos_embeds[l](level.center)
            with torch.no_grad():
                mask_prompt, mask_plain = self.attention_masks(l, level.center)
            x = self.stages[l](tokens, pos, cache=cache, geo_prompt=geos[l][0], geo_plain=geos[l][1], n_cls=0,
                               insert_at=0, mask_prompt=mask_prompt, mask_plain=mask_plain)
        return self.cls_head_finetune(self.readout(x))
