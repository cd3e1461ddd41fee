"""GAPrompt (Geometry-Aware Point cloud Prompt, ICML 2025) on a frozen Point-MAE.

Source: zhoujiahuan1991/ICML2025-GAPrompt@8a26a2e, models/prompt_MAE.py L140-587 (block,
encoder loop, adapter, ``PointTransformer_pointtokenprompt``), models/GAPrompt.py (ShiftNet, the
point prompt), tools/runner_module.py L90-97 (what trains).

Forward: the Point Shift Prompter (``shift_net``) shifts the input points and gives a shape
feature f = ``shape_feature_mlp``(shape vector) (B, 1, C); ``factor`` x the learnable
``point_prompt.points`` (1, P, 3) are appended to the cloud; Point-MAE tokenises it; a second
grouping of the G centers (G/2 centers, 16 nearest) gives the propagation indices. Block l:
(a) for l < ``prompt_depth``, 10 prompts T = Drop(E_l) + 0.5 f + PosMLP(``prompt_cor``) are
inserted after cls; (b) prompt propagation (before or after attention, per dataset): the 16
neighbour tokens of each level-2 center are max-pooled, BN (``out_transform``) + GELU, plus 0.3 x
the center's token, and spread back to every point token (inverse squared distance over all
level-2 centers, x 0.3); (c) the backbone block; (d) a bottleneck ``adapter`` (LN, 384 -> 16,
QuickGELU, 16 -> 384, x 0.7) on every non-cls token (+ 0.5 f inside for l < prompt_depth);
(e) the prompts are dropped again. Head: [cls; max over point tokens; f] (3C), dropout 0.6.

Unused tensors, option ``unused_tensors``: the official model registers ``prompt_embeddings`` in
all 12 blocks (only the first ``prompt_depth`` are used), an ``adapter.scale`` Linear and frozen
``scaler1/2`` that the forward never reads; true (faithful) keeps them, so the official counts
and files match; false (default) leaves them out (27,660 trainable and 24 frozen fewer).

The defect, one option ``index_layout``: the propagation indices are built with a per-sample
offset b·G, but in the prompt blocks the flattened token matrix has G + 10 rows per sample, so
sample b reads rows of *other* samples (and sample 0 reads prompt tokens as points): eval
logits depend on the batch. ``"official"`` (faithful) reproduces it; ``"per_sample"`` (default)
offsets by the real row count and skips the prompt rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from models import ops
from models.errors import ConfigError
from models.layers import Group, trunc_normal_
from models.peft.gaprompt.shift_net import ShiftNet
from models.peft.shared import FrozenBNStatsMixin, carry_checkpoint_identity

MODES = ("default", "faithful")
LAYOUTS = ("per_sample", "official")
PROPAGATIONS = ("after", "before")


@dataclass(frozen=True)
class GAPromptOptions:
    """Official values (cfgs/gaprompt_*.yaml): ``point_number`` P 5 (PB_T50_RS, ModelNet40) / 10
    (OBJ_BG, OBJ_ONLY), ``perturbation`` ρ 0.8 / 0.2 / 0.1 / 0.05 (PB / BG / ONLY / MN40),
    ``propagation`` "before" attention on OBJ_BG, "after" elsewhere; 10 prompt tokens in the first
    6 blocks, point prompts x5 from U(-0.01, 0.01), adapter bottleneck ``adapter_dim`` 16, dropouts 0.1, head
    dropout 0.6. ``index_layout`` unset (``""``) follows ``mode``."""

    mode: str = "default"
    point_number: int = 5
    perturbation: float = 0.8
    propagation: str = "after"
    num_tokens: int = 10
    prompt_depth: int = 6
    factor: float = 5.0
    scale: float = 0.01
    adapter_dim: int = 16
    prompt_dropout: float = 0.1
    adapter_dropout: float = 0.1
    head_dropout: float = 0.6
    index_layout: str = ""
    unused_tensors: bool | None = None

    def check(self) -> None:
        for name, valid in (("mode", MODES), ("propagation", PROPAGATIONS), ("index_layout", ("",) + LAYOUTS)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"gaprompt option {name}={getattr(self, name)!r} is invalid: expected one of "
                                  f"{', '.join(v for v in valid if v)}")
        for name in ("point_number", "num_tokens", "adapter_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"gaprompt option {name}={getattr(self, name)} is invalid: expected a positive integer")
        if self.unused_tensors is not None and not isinstance(self.unused_tensors, bool):
            raise ConfigError(f"gaprompt option unused_tensors={self.unused_tensors!r} is invalid: expected true or false")
        if self.prompt_depth < 0:
            raise ConfigError(f"gaprompt option prompt_depth={self.prompt_depth} is invalid: expected >= 0")

    @property
    def layout(self) -> str:
        return self.index_layout or ("official" if self.mode == "faithful" else "per_sample")

    @property
    def keep_unused(self) -> bool:
        return self.mode == "faithful" if self.unused_tensors is None else self.unused_tensors


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class GAAdapter(nn.Module):
    """A(z) = 0.7 · ln2(Drop(QuickGELU(ln1(layer_norm z)))); ``scale`` (``unused``) exists in the
    official model but is never used."""

    def __init__(self, dim: int, hidden: int, dropout: float, unused: bool = False):
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        if unused:
            self.scale = nn.Linear(dim, 1)
        self.ln1 = nn.Linear(dim, hidden)
        self.ln2 = nn.Linear(hidden, dim)
        self.act = QuickGELU()
        self.drop = nn.Dropout(dropout)
        for layer in (self.ln1, self.ln2):
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 0.7 * self.ln2(self.drop(self.act(self.ln1(self.layer_norm(z)))))


@dataclass
class Propagation:
    """Indices and weights one forward shares across blocks."""

    neighbours: torch.Tensor   # (B, G/2, 16) index of each level-2 center's neighbours among the G
    centers: torch.Tensor      # (B, G/2) index of the level-2 centers among the G
    weights: torch.Tensor      # (B, G, G/2) interpolation weights, rows sum to 1


class GABlock(nn.Module):
    """The backbone block (adopted names) with ``prompt_embeddings`` (prompt blocks; the official
    model has them in every block), ``scaler1/2`` (official only: frozen, unused), ``adapter`` and
    ``out_transform``."""

    def __init__(self, block: nn.Module, dim: int, o: GAPromptOptions, prompted: bool):
        super().__init__()
        if prompted or o.keep_unused:
            self.prompt_embeddings = nn.Parameter(torch.zeros(o.num_tokens, dim))
        if o.keep_unused:
            self.scaler1 = nn.Parameter(torch.ones(1))
            self.scaler2 = nn.Parameter(torch.ones(1))
        self.norm1, self.norm2, self.mlp, self.attn = block.norm1, block.norm2, block.mlp, block.attn
        self.drop_path = block.drop_path
        self.adapter = GAAdapter(dim, o.adapter_dim, o.adapter_dropout, o.keep_unused)
        self.out_transform = nn.Sequential(nn.BatchNorm1d(dim), nn.GELU())
        self.prompt_drop = nn.Dropout(o.prompt_dropout)
        self.before = o.propagation == "before"
        self.official_layout = o.layout == "official"

    def propagate(self, x: torch.Tensor, geo: Propagation) -> torch.Tensor:
        b, n, c = x.shape
        g = geo.weights.shape[1]
        rows = n - 1                                      # tokens per sample without cls
        flat = x[:, 1:].reshape(b * rows, c)
        base = torch.arange(b, device=x.device)
        if self.official_layout:
            base = base * g                              # stride G whatever the layout: the defect
        else:
            base = base * rows + (rows - g)              # this sample's point rows
        nb_idx = geo.neighbours + base[:, None, None]
        ct_idx = geo.centers + base[:, None]
        nb = flat[nb_idx.reshape(-1)].view(-1, nb_idx.shape[-1], c)
        nb = nb + self.drop_path(nb)
        pooled = nb.max(dim=1).values.view(b, -1, c)
        v = self.out_transform[1](self.out_transform[0](pooled.transpose(1, 2))).transpose(1, 2)
        v = v + 0.3 * flat[ct_idx.reshape(-1)].view(b, -1, c)
        spread = 0.3 * geo.weights @ v
        return torch.cat([x[:, :-g], x[:, -g:] + spread], dim=1)

    def forward(self, x, geo: Propagation, shape: torch.Tensor | None, prompt_pos: torch.Tensor | None):
        prompted = shape is not None
        if prompted:
            t = self.prompt_drop(self.prompt_embeddings)[None] + 0.5 * shape + prompt_pos[None]
            x = torch.cat([x[:, :1], t, x[:, 1:]], dim=1)
        if self.before:
            x = self.propagate(x, geo)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if not self.before:
            x = self.propagate(x, geo)
        cls, rest = x[:, :1], x[:, 1:]
        rest = rest + self.adapter(rest + 0.5 * shape if prompted else rest)
        if prompted:
            rest = rest[:, self.prompt_embeddings.shape[0]:]
        return torch.cat([cls, rest], dim=1)


class GAEncoder(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int, o: GAPromptOptions):
        super().__init__()
        self.blocks = nn.ModuleList(GABlock(b, dim, o, i < o.prompt_depth) for i, b in enumerate(encoder.blocks))
        self.depth = o.prompt_depth

    def forward(self, x, pos, geo, shape, prompt_pos):
        for i, blk in enumerate(self.blocks):
            on = i < self.depth
            x = blk(x + pos, geo, shape if on else None, prompt_pos if on else None)
        return x


class PointCloudPrompt(nn.Module):
    """``points`` (1, P, 3), U(-scale, scale); appended to every cloud x ``factor``."""

    def __init__(self, number: int, scale: float, factor: float):
        super().__init__()
        self.points = nn.Parameter(torch.empty(1, number, 3).uniform_(-scale, scale))
        self.factor = factor

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        return torch.cat([pts, (self.points * self.factor).expand(pts.shape[0], -1, -1)], dim=1)


def propagation_geometry(center: torch.Tensor, k: int = 16) -> Propagation:
    """Level-2 grouping of the G centers: FPS G/2, k nearest; interpolation weights from every
    center to every level-2 center, 1 / (d² + 1e-8) with expansion distances, normalised."""
    g = center.shape[1]
    centers = ops.furthest_point_sample(center, g // 2)
    sub = ops.gather_points(center, centers)
    neighbours = ops.knn(center, sub, k)[1]
    w = 1.0 / (ops.square_distance(center, sub) + 1e-8)
    return Propagation(neighbours, centers, w / w.sum(-1, keepdim=True))


class GAPrompt(FrozenBNStatsMixin, nn.Module):
    """(B, N, 3) points -> (B, K) logits; official names (``prompt_cor``, ``point_prompt.points``,
    ``shift_net.*``, ``shape_feature_mlp.*``, per block ``prompt_embeddings``, ``adapter.*``,
    ``out_transform.0.*``)."""

    def __init__(self, backbone: nn.Module, opts: GAPromptOptions):
        super().__init__()
        cfg = backbone.cfg
        self.opts, self.cfg = opts, cfg
        dim, g = cfg.trans_dim, cfg.num_group
        self.cls_token, self.cls_pos = backbone.cls_token, backbone.cls_pos
        self.prompt_cor = nn.Parameter(trunc_normal_(torch.empty(opts.num_tokens, 3), std=0.06))
        self.group_divider = backbone.group_divider
        self.encoder = backbone.encoder
        self.pos_embed = backbone.pos_embed
        self.blocks = GAEncoder(backbone.blocks, dim, opts)
        self.norm = backbone.norm
        head = list(backbone.cls_head_finetune)
        head[0] = nn.Linear(3 * dim, head[0].out_features)
        for i, m in enumerate(head):
            if isinstance(m, nn.Dropout):
                head[i] = nn.Dropout(opts.head_dropout)
        self.cls_head_finetune = nn.Sequential(*head)
        self.point_prompt = PointCloudPrompt(opts.point_number, opts.scale, opts.factor)
        self.shift_net = ShiftNet(g, opts.perturbation)
        self.shape_feature_mlp = nn.Sequential(nn.Linear(g // 2 * 8, 16), nn.GELU(), nn.Dropout(0.25),
                                               nn.Linear(16, dim))
        carry_checkpoint_identity(self, backbone)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        shifted, shape_vec = self.shift_net(pts)
        shape = self.shape_feature_mlp(shape_vec)[:, None]           # (B, 1, C)
        neighborhood, center, _ = self.group_divider(self.point_prompt(shifted))
        tokens = self.encoder(neighborhood)
        with torch.no_grad():
            geo = propagation_geometry(center.detach())
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center)], dim=1)
        x = self.norm(self.blocks(x, pos, geo, shape, self.pos_embed(self.prompt_cor)))
        feat = torch.cat([x[:, 0], x[:, 1:].max(dim=1).values, shape[:, 0]], dim=-1)
        return self.cls_head_finetune(feat)

    def extra_repr(self) -> str:
        o = self.opts
        return f"point_number={o.point_number}, propagation={o.propagation!r}, index_layout={o.layout!r}"


TUNED = ("point_prompt", "shift_net", "shape_feature_mlp", "adapter", "cls_pos", "cls_token", "cls_head_",
         "prompt_embeddings", "prompt_cor", "out_transform")


def is_tuned(name: str) -> bool:
    """The official filter (runner_module.py L90-97); ``scaler1/2`` stay frozen."""
    return any(s in name for s in TUNED)
