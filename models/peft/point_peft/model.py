"""Point-PEFT (AAAI 2024): point-prior prompt + geometry-aware adapter on a frozen backbone.

``models.peft.point_peft.apply_point_peft(backbone, options)`` (registered as method ``point_peft``) turns a Point-MAE,
Point-BERT or Point-M2AE classifier into its Point-PEFT model. Every tensor has the name of
the official Point-PEFT model, down to the leaf, so the authors' fine-tuned files load as they
are: the backbone parts as in Point-MAE (``encoder.*``, ``blocks.blocks.3.attn.qkv.weight``)
or as in Point-PEFT's M2AE model (``encoders.0.*``, ``blocks.2.blocks.4.mlp.fc1.bias``; see
``m2ae``), the new parts ``prompt_embeddings``, ``prompt_cor``, ``cp_adapter.ln1``,
``adapter.ln2``, ``adapter1``, ``attn1``, ``norm3``, ``out_transform``, ``ad_gate``;
``param_group`` reports them as in the official count (Point-PEFT README; docs/point-peft.md §7).

What trains (docs/point-peft.md §6): the PEFT modules, the biases of attn.proj / mlp.fc1 / mlp.fc2 / norm1 /
norm2, the final LayerNorm, cls token and position, the head. Everything else is frozen.

Three pieces live outside the module tree / state dict on purpose:
* the frozen query encoder (official ``cp_model``; ``models.peft.point_peft.query_encoder``), a copy of
  the backbone's pre-trained weights, held in ``self.__dict__`` so ``parameters()`` and
  ``state_dict()`` exclude it; ``.to()`` / ``.cuda()`` still move it (``_apply``);
* the memory bank, a non-persistent buffer ``memory_bank`` (D, M) (moves with the model, not
  saved in checkpoints), set with ``set_memory_bank`` or ``harness.memory_bank``;
* nothing is read from disk in ``__init__`` (``bank_path`` is read by ``apply_point_peft``).

Speed and memory (the official code is slower and heavier than full fine-tuning; this one is
not): the frozen stem (grouping, patch encoder, positional MLP) runs under ``no_grad``; the
query encoder runs under ``no_grad`` and, in fixed mode, starts from the backbone's own patch
tokens (FPS is greedy, so the query's 64 centers are the first 64 of the backbone's 128 and its
groups are the same; with frozen eval-mode BatchNorms the tokens are identical); geometry
(FPS, kNN, IDW weights) is computed once per forward and shared by the blocks; gathers are
batched index_selects; frozen weights get no weight gradients. Training memory: the frozen
attention / MLP sub-layers (backbone option ``recompute``) and the geometric branch's local
attention (``geo_recompute``) are recomputed in backward instead of kept (same numbers).
"""
from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch import nn

from models import ops
from models.checkpoints import PEFT_PARTS
from models.errors import CheckpointError, ConfigError
from models.layers import Block, TransformerEncoder, trunc_normal_
from models.peft.point_peft.adapters import Adapter
from models.peft.point_peft.geometric_adapter import (Geometry, LocalAttention, OutTransform, geometric_branch,
                                           group_indices, idw_weights, make_geometry)
from models.peft.point_peft.options import PointPEFTOptions, resolve_options
from models.peft.point_peft.prompt import cache_prompt
from models.peft.point_peft.query_encoder import TokenQueryEncoder

# The BitFit-style subset of backbone biases the official runner trains.
BIAS_SUBSET = ("attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.bias", "norm1.bias", "norm2.bias")
HEAD_PARTS = ("cls_head_finetune", "cls_token", "cls_pos", "norm")


class MissingMemoryBankWarning(UserWarning):
    """A Point-PEFT model ran without a memory bank (the retrieved cache tokens were zeros)."""


MISSING_BANK = ("Point-PEFT ran without a memory bank: the retrieved cache tokens are zeros. Fine for "
                "counting parameters; for training build one (run_all.py build-cache) and load it "
                "(harness.memory_bank.load_memory_bank or model.set_memory_bank).")


def is_bias_subset(name: str) -> bool:
    return any(name.endswith("." + s) for s in BIAS_SUBSET)


def is_trainable(name: str, train_bias_subset: bool = True) -> bool:
    """The official runner's trainable set (docs/point-peft.md §6), decided on our parameter names."""
    parts = name.split(".")
    if any(p in PEFT_PARTS for p in parts) or parts[0] in HEAD_PARTS:
        return True
    return train_bias_subset and is_bias_subset(name)


def param_group(name: str) -> str:
    """Group of a parameter for the §7 breakdown; frozen backbone parts are ``frozen:<module>``."""
    parts = name.split(".")
    for part in ("prompt_embeddings", "cp_adapter", "adapter1", "adapter", "attn1", "norm3",
                 "out_transform", "ad_gate", "prompt_cor"):
        if part in parts:
            return part
    if parts[0] == "cls_head_finetune":
        return "cls_head"
    if parts[0] in ("cls_token", "cls_pos"):
        return "cls_token+cls_pos"
    if parts[0] == "norm":
        return "final_norm"
    if is_bias_subset(name):
        return "backbone_bias"
    return f"frozen:{parts[0]}"


# ---------------------------------------------------------------------------------------------
# Block and stage

class PEFTBlock(nn.Module):
    """A backbone ``Block`` (adopted: ``norm1``, ``norm2``, ``mlp``, ``attn`` keep their names)
    with Point-PEFT's prompts, cache adapter, MLP-branch adapter, geometric branch and
    block-end adapter (docs/point-peft.md §3 / §5).

    ``use_prompt`` / ``use_cache``: whether this block inserts prompts / adds the cache prompt.
    ``own_prompt`` / ``own_cache``: whether it owns the tensors (faithful MAE owns them in every
    block and leaves blocks 6-11's unused, B5).
    """

    def __init__(self, block: Block, dim: int, opts: PointPEFTOptions, *, use_prompt: bool,
                 use_cache: bool, own_prompt: bool, own_cache: bool, own_gate: bool, query_dim: int,
                 local: bool):
        super().__init__()
        self.norm1, self.norm2, self.mlp, self.attn = block.norm1, block.norm2, block.mlp, block.attn
        self.drop_path = block.drop_path
        self.use_prompt, self.use_cache = use_prompt, use_cache
        self.gated = opts.mlp_adapter_mode == "gated"
        self.adapter_scale = opts.adapter_scale
        self.attn_droppath = opts.attn_branch_droppath
        self.geo_kwargs = dict(pool=opts.geo_pool, center_coef=opts.geo_center_coef,
                               drop_unit=opts.geo_droppath, recompute=opts.geo_recompute)
        self.propagate_coef = opts.geo_propagate_coef
        if own_prompt:
            self.prompt_embeddings = nn.Parameter(torch.zeros(opts.num_prompt_tokens, dim))
            trunc_normal_(self.prompt_embeddings, std=opts.prompt_init_std)
        self.prompt_dropout = nn.Dropout(opts.prompt_dropout)
        if own_cache:
            if query_dim != dim:
                raise ConfigError(f"point_peft cache layer of width {dim} cannot take the {query_dim}-d "
                                  "cache prompt; choose cache_layers of that width")
            self.cp_adapter = Adapter(query_dim, opts.cp_adapter_dim, opts.adapter_dropout,
                                      residual=True, init=opts.adapter_init)
        self.adapter = Adapter(dim, opts.adapter_dim, opts.adapter_dropout, residual=self.gated,
                               init=opts.adapter_init)
        self.adapter1 = Adapter(dim, opts.adapter_dim, opts.adapter_dropout, residual=True,
                                init=opts.adapter_init)
        self.out_transform = OutTransform(dim)
        if own_gate:
            self.ad_gate = nn.Parameter(torch.full((1,), float(opts.ad_gate_init)))
        if local:  # per-block local attention (geo_share_local_attn=false)
            self.attn1 = LocalAttention(dim, opts.geo_local_inner_dim, opts.geo_local_heads)
            self.norm3 = nn.LayerNorm(dim)

    def prompts(self, batch: int, cache: torch.Tensor | None) -> torch.Tensor:
        """P = Dropout(E) (+ cp_adapter(cache)); the dropout mask differs per sample."""
        p = self.prompt_dropout(self.prompt_embeddings.expand(batch, -1, -1))
        return p + self.cp_adapter(cache) if self.use_cache else p

    def forward(self, h: torch.Tensor, *, cache: torch.Tensor | None, geo: Geometry,
                attn1: LocalAttention, norm3: nn.LayerNorm, n_cls: int, insert_at: int,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, n_cls + G, C), positions already added -> same shape."""
        b = h.shape[0]
        num_p = 0
        z = h
        if self.use_prompt:
            p = self.prompts(b, cache)
            num_p = p.shape[1]
            z = torch.cat([h[:, :insert_at], p, h[:, insert_at:]], dim=1)
        a = self.attn.normed(self.norm1, z, mask)
        z = z + (self.drop_path(a) if self.attn_droppath else a)
        m = self.drop_path(self.mlp.normed(self.norm2, z))
        if self.gated:
            z = z + self.ad_gate * self.adapter(m)
        else:
            z = z + m + self.adapter_scale * self.adapter(m)
        # take the prompts out: rest = [cls; point tokens]
        if num_p:
            rest = torch.cat([z[:, :insert_at], z[:, insert_at + num_p:]], dim=1) if insert_at else z[:, num_p:]
        else:
            rest = z
        t = rest[:, n_cls:]
        if geo.with_prompts:
            u = z[:, n_cls:] if insert_at == n_cls else torch.cat([z[:, insert_at:insert_at + num_p], t], 1)
        else:
            u = t
        v = geometric_branch(u, geo, attn1, norm3, self.out_transform, drop_rate=self.drop_path.drop_prob,
                             training=self.training, **self.geo_kwargs)
        t = t + self.propagate_coef * torch.bmm(geo.weights, v)
        out = torch.cat([rest[:, :n_cls], t], dim=1) if n_cls else t
        # adapter1 acts per token; the official code also runs it on the prompts, then drops them
        return self.adapter1(out)


class PEFTEncoder(nn.Module):
    """A stage of PEFT blocks; keeps the backbone's ``blocks`` list name and adds the shared
    ``attn1`` / ``norm3`` of the stage."""

    def __init__(self, encoder: TransformerEncoder, dim: int, first: int, opts: PointPEFTOptions, *,
                 prompt_set: set, cache_set: set, own_prompt_set: set, own_cache_set: set,
                 own_gate: bool, query_dim: int):
        super().__init__()
        shared = opts.geo_share_local_attn
        self.blocks = nn.ModuleList(
            PEFTBlock(blk, dim, opts, use_prompt=first + j in prompt_set, use_cache=first + j in cache_set,
                      own_prompt=first + j in own_prompt_set, own_cache=first + j in own_cache_set,
                      own_gate=own_gate, query_dim=query_dim, local=not shared)
            for j, blk in enumerate(encoder.blocks))
        if shared:
            self.attn1 = LocalAttention(dim, opts.geo_local_inner_dim, opts.geo_local_heads)
            self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, *, cache, geo_prompt, geo_plain, n_cls: int,
                insert_at: int, mask_prompt=None, mask_plain=None) -> torch.Tensor:
        for blk in self.blocks:
            local = blk if hasattr(blk, "attn1") else self
            x = blk(x + pos, cache=cache if blk.use_cache else None,
                    geo=geo_prompt if blk.use_prompt else geo_plain,
                    attn1=local.attn1, norm3=local.norm3, n_cls=n_cls, insert_at=insert_at,
                    mask=mask_prompt if blk.use_prompt else mask_plain)
        return x


# ---------------------------------------------------------------------------------------------
# Model

class PointPEFT(nn.Module):
    """What every Point-PEFT model shares: bank, query encoder, trainability, groups, BN mode."""

    kind: str = ""
    opts: PointPEFTOptions

    # -- query encoder (outside the module tree) --------------------------------------------
    @property
    def query_encoder(self) -> nn.Module:
        return self.__dict__["_query_encoder"]

    def _set_query_encoder(self, encoder: nn.Module) -> None:
        object.__setattr__(self, "_query_encoder", encoder)

    def backbone_state(self) -> dict:
        """This model's backbone tensors under the backbone classifier's names."""
        return self.state_dict()

    def reset_query_encoder(self, state: dict | None = None, sha256: str | None = None,
                            checkpoint: str | None = None) -> None:
        """Re-take the frozen query encoder's weights (official ``cp_model``, strict).

        ``checkpoint``: a pre-training file, read here (Point-M2AE's query needs its
        ``h_encoder.encoder_norms.*``, which no fine-tune model holds); a fine-tuned file is a
        ``CheckpointError``. Else ``state`` (backbone names), else this model's current backbone
        tensors. The query encoder is never taken from a fine-tuned file, so loading one after
        this leaves it as it is.
        """
        if checkpoint is not None:
            from models.checkpoints import pretrain_state
            from models.peft.point_peft.memory_bank import BACKBONE_NAMES
            state = pretrain_state(checkpoint, BACKBONE_NAMES[self.kind])
        elif state is None:
            state = self.backbone_state()
        try:
            self.query_encoder.reset(state, strict=checkpoint is not None)
        except KeyError as err:
            where = f"checkpoint {checkpoint}" if checkpoint is not None else "query encoder"
            raise CheckpointError(f"{where}: cannot build the frozen query encoder: {err.args[0]}") from None
        if sha256 is not None:
            self.checkpoint_sha256 = sha256

    @torch.no_grad()
    def query_features(self, pts: torch.Tensor) -> torch.Tensor:
        """The frozen pre-trained pooled feature (B, D) of points (B, N, 3): the retrieval query,
        and what the memory bank holds (one column per training sample)."""
        return self.query_encoder(pts)

    @property
    def query_dim(self) -> int:
        return self.query_encoder.dim

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if "_query_encoder" in self.__dict__:
            self.query_encoder._apply(fn)
        return self

    # -- memory bank -------------------------------------------------------------------------
    @property
    def has_memory_bank(self) -> bool:
        return self.memory_bank.shape[1] > 0

    def set_memory_bank(self, bank: torch.Tensor) -> None:
        """Install the bank (D, M) as the non-persistent buffer ``memory_bank``."""
        if not isinstance(bank, torch.Tensor) or bank.dim() != 2 or bank.shape[0] != self.query_dim:
            shape = tuple(bank.shape) if isinstance(bank, torch.Tensor) else type(bank).__name__
            raise ConfigError(f"memory bank {shape} does not fit this model: expected ({self.query_dim}, M)")
        need = self.opts.num_prompt_tokens - 2 + int(self.opts.bank_exclude_self)
        if bank.shape[1] < need:
            raise ConfigError(f"memory bank has {bank.shape[1]} columns; retrieval of the top "
                              f"{need} needs at least {need}")
        ref = self.memory_bank
        self.memory_bank = bank.detach().to(device=ref.device, dtype=ref.dtype).contiguous()
        self._ddp_ignore_bank()

    def cache_tokens(self, query: torch.Tensor) -> torch.Tensor:
        """The cache prompt (B, T, D) for queries (B, D)."""
        if not self.has_memory_bank:
            warnings.warn(MISSING_BANK, MissingMemoryBankWarning, stacklevel=2)
        return cache_prompt(query, self.memory_bank if self.has_memory_bank else None,
                            self.opts.num_prompt_tokens - 2, self.opts.cache_temperature,
                            exclude_top1=self.opts.bank_exclude_self and self.training)

    # -- trainability, groups, modes ---------------------------------------------------------
    def mark_trainable(self) -> None:
        for name, p in self.named_parameters():
            p.requires_grad_(is_trainable(name, self.opts.train_bias_subset))

    @staticmethod
    def param_group(name: str) -> str:
        return param_group(name)

    @property
    def checkpoint_new_keys(self) -> tuple[str, ...]:
        """Key patterns a backbone checkpoint lacks (for ``models.checkpoints.load_checkpoint``)."""
        return ("prompt_cor",) + tuple(f"*{p}*" for p in PEFT_PARTS if p != "prompt_cor")

    def frozen_batchnorms(self) -> Iterable[nn.Module]:
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in m.parameters()):
                yield m

    def train(self, mode: bool = True):
        """Fixed mode (``freeze_bn_stats``): the frozen BatchNorms stay in eval mode (B12)."""
        super().train(mode)
        if mode and self.opts.freeze_bn_stats:
            for m in self.frozen_batchnorms():
                m.eval()
        return self

    def _stem_grad(self, *modules: nn.Module | None) -> bool:
        """Whether the stem needs autograd (only if someone unfroze it)."""
        return torch.is_grad_enabled() and any(
            p.requires_grad for m in modules if m is not None for p in m.parameters())

    def _add_prompt_coords(self, o, prompt_set) -> None:
        """The learnable prompt coordinates ``prompt_cor`` (T, 3), when prompts use geometry."""
        if o.geo_use_prompt_coords and prompt_set:
            self.prompt_cor = nn.Parameter(torch.zeros(o.num_prompt_tokens, 3))
            trunc_normal_(self.prompt_cor, std=o.prompt_init_std)

    def _register_bank(self) -> None:
        self.register_buffer("memory_bank", torch.zeros(self.query_dim, 0), persistent=False)
        self._ddp_ignore_bank()

    def _ddp_ignore_bank(self) -> None:
        """Every rank loads the same bank: DDP need not broadcast its ~17 MB every step."""
        from torch.nn.parallel import DistributedDataParallel
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["memory_bank"])

    def extra_repr(self) -> str:
        bank = tuple(self.memory_bank.shape) if hasattr(self, "memory_bank") else None
        return f"mode={self.opts.mode!r}, memory_bank={bank}"


class PointPEFTTransformer(PointPEFT):
    """Point-PEFT on Point-MAE (official) or Point-BERT (docs/point-peft.md §10 port): cls token, 12 blocks,
    prompts in blocks 0-5 after the cls token, cache prompt in the same blocks."""

    def __init__(self, backbone: nn.Module, options: dict | None = None, kind: str = "mae"):
        super().__init__()
        cfg = backbone.cfg
        self.kind = kind
        self.cfg = cfg
        o = resolve_options(options, kind, cfg.depth, cfg.num_group, cfg.group_size)
        self.opts = o
        self.checkpoint_sha256 = getattr(backbone, "checkpoint_sha256", None)
        # the query encoder copies the backbone's (pre-trained) weights before anything changes
        self._set_query_encoder(TokenQueryEncoder(
            backbone, o.query_num_group, o.query_group_size, use_cls=kind == "bert", pool=o.cache_query_pool))
        dim = cfg.trans_dim
        # backbone modules under their own names
        self.cls_token = backbone.cls_token
        self.cls_pos = backbone.cls_pos
        self.group_divider = backbone.group_divider
        self.encoder = backbone.encoder
        self.reduce_dim = getattr(backbone, "reduce_dim", None)
        self.pos_embed = backbone.pos_embed
        depth = cfg.depth
        prompt_set = set(o.prompt_blocks(depth))
        cache_set = set(o.cache_blocks(depth))
        keep = o.unused_params == "keep"
        self.blocks = PEFTEncoder(
            backbone.blocks, dim, 0, o, prompt_set=prompt_set, cache_set=cache_set,
            own_prompt_set=set(range(depth)) if keep else prompt_set,
            own_cache_set=set(range(depth)) if keep else cache_set,
            own_gate=keep or o.mlp_adapter_mode == "gated", query_dim=self.query_dim)
        self.norm = backbone.norm
        self.cls_head_finetune = backbone.cls_head_finetune
        self._add_prompt_coords(o, prompt_set)
        self._register_bank()
        self.insert_at = 1 if o.prompt_pos == "after_cls" else 0
        if o.geo_num_centers > cfg.num_group or o.geo_k > cfg.num_group:
            raise ConfigError(f"point_peft geo_num_centers={o.geo_num_centers} / geo_k={o.geo_k} exceed the "
                              f"backbone's {cfg.num_group} patches")
        self.mark_trainable()
        self.train()

    # -- pieces of the forward pass ----------------------------------------------------------
    def stem(self, pts: torch.Tensor):
        """Frozen grouping, patch tokens (B, G, C), their positional embedding and centers."""
        with torch.set_grad_enabled(self._stem_grad(self.encoder, self.reduce_dim, self.pos_embed)):
            neighborhood, center, _ = self.group_divider(pts)
            tokens = self.encoder(neighborhood)
            if self.reduce_dim is not None:
                tokens = self.reduce_dim(tokens)
            pos = self.pos_embed(center)
        return neighborhood, center, tokens, pos

    @torch.no_grad()
    def _query_from_stem(self, pts, neighborhood, center, tokens, pos) -> torch.Tensor:
        """The query feature, reusing the backbone's grouping (and, in fixed mode, its tokens)."""
        q = self.query_encoder
        gq, kq = q.group_divider.num_group, q.group_divider.group_size
        g, k = self.cfg.num_group, self.cfg.group_size
        same_groups = (kq == k and gq <= g and q.group_divider.knn == self.group_divider.knn
                       and (gq == g or q.group_divider.knn == "stable"))
        if not same_groups:
            return q(pts)
        if self.opts.query_reuse_tokens:
            return q.from_tokens(tokens[:, :gq], pos[:, :gq])
        return q.from_tokens(q.tokens(neighborhood[:, :gq]), q.pos_embed(center[:, :gq]))

    def geometries(self, pts: torch.Tensor, center: torch.Tensor):
        """(geometry of the prompt blocks, geometry of the other blocks); either may be None."""
        o = self.opts
        b, g, _ = center.shape
        s, k = o.geo_num_centers, o.geo_k
        blocks = self.blocks.blocks
        with_prompts = hasattr(self, "prompt_cor")
        need_plain = any(not blk.use_prompt for blk in blocks) or not with_prompts
        need_prompt = with_prompts and any(blk.use_prompt for blk in blocks)
        geo_plain = geo_prompt = None
        if need_plain:
            sub, fi, ki = group_indices(center, s, k)
            geo_plain = make_geometry(g, False, fi, ki, g, idw_weights(
                center, sub, o.idw_distance, o.geo_interp_neighbors))
        if need_prompt:
            t = o.num_prompt_tokens
            cor = self.prompt_cor.unsqueeze(0).expand(b, -1, -1)
            if o.geo_indexing == "official":
                # B1: FPS(G) of [prompt_cor; points] gives the positions, ordered unlike the tokens;
                # indices into those G positions, offset b*G, index the (T+G)-long [prompts; tokens]
                cloud = torch.cat([cor, pts], dim=1)
                with torch.no_grad():
                    fidx = ops.furthest_point_sample(cloud.detach(), g)
                positions = ops.gather_points(cloud, fidx)
                sub, fi, ki = group_indices(positions, s, k)
                geo_prompt = make_geometry(t + g, True, fi, ki, g, idw_weights(
                    positions, sub, o.idw_distance, o.geo_interp_neighbors))
            else:
                # prompts at prompt_cor, point tokens at their centers, per-sample indices
                positions = torch.cat([cor, center], dim=1)
                sub, fi, ki = group_indices(positions, s, k)
                geo_prompt = make_geometry(t + g, True, fi, ki, t + g, idw_weights(
                    center, sub, o.idw_distance, o.geo_interp_neighbors))
        return geo_prompt, geo_plain or geo_prompt

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        neighborhood, center, tokens, pos_pts = self.stem(pts)
        query = self._query_from_stem(pts, neighborhood, center, tokens, pos_pts)
        cache = self.cache_tokens(query)
        geo_prompt, geo_plain = self.geometries(pts, center)
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), pos_pts], dim=1)
        x = self.blocks(x, pos, cache=cache, geo_prompt=geo_prompt or geo_plain, geo_plain=geo_plain,
                        n_cls=1, insert_at=self.insert_at)
        x = self.norm(x)
        return self.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1))
