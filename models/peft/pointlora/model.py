"""PointLoRA (LoRA with multi-scale token selection, CVPR 2025) on a frozen Point-MAE.

Source: songw-zju/PointLoRA@82719f0, models/PointLoRA.py L185-243 (encoder loop), L528-688
(``PointTransformer_PointLoRA``), utils/lora.py L38-90 (``LoRALinear``), the runner
tools/runner_finetune_pointlora.py L88-89, L164, L493-512 (injection, loss).

* LoRA (rank 8) on ``attn.qkv`` and ``attn.proj`` of every block, each wrapper also adding
  w * M(x) with a shared prompt MLP (``blocks.prompt_qkv_mlp`` / ``blocks.prompt_proj_mlp``) and
  a frozen scalar w = ``attn.qkv.weight`` [1] (init 1); the pre-trained weight moves to
  ``attn.qkv.linear.weight``. ``scaling`` (alpha / r = 1) is never applied, as official.
* Token selection: a mask predictor ``lora_mask_predictor`` p = sigmoid(fc2(ReLU(fc1 t))) scores
  the patch tokens at scale 1 (the backbone's grouping) and at scale 2 (Group(G/2, 64)); the
  top ``select`` = (32, 8) tokens of each scale are appended: [cls; G; 32; 8]. Before each block
  x <- x + pos, patch rows + M_p(.), selected rows + M_pos(.) (``blocks.prompt_mlp`` /
  ``blocks.prompt_pos_mlp``). Head input [cls; max over all other tokens].
* Loss: cross-entropy + 0.004 * mask term (``auxiliary_loss()`` after a training forward).

Defects of the official code, one option each (``faithful`` mode reproduces them):
* ``mask_term``: ``"negative_entropy"`` (official) adds m = mean(p log p + (1-p) log(1-p)), the
  *negative* binary entropy, so minimising it drives every score to 0.5, against its stated
  purpose (push scores to 0 or 1). ``"entropy"`` (default) adds -m.
* ``score_gradient``: false (official): top-k passes no task gradient to the scores, so the
  predictor learns only from the mask term. true (default): the selected tokens are multiplied
  by p / stopgrad(p) -- the same values forward, and the task loss reaches the predictor.
* ``encode_scale1_separately``: true (official) runs the patch encoder a third time for the
  scale-1 candidates, which are the patch tokens themselves (the grouping is identical), and so
  updates the encoder BatchNorm statistics 3x per step; false (default) reuses the patch tokens.
* ``encoder_batch_stats``: true (official) leaves the encoder's BatchNorms in train mode (the
  first one is tuned with ``first_conv``). The scale-2 pass (groups of 64 points) then feeds the
  same running statistics as the patch grouping, so in eval the patch tokens are normalised with
  a blend of both scales' statistics, not the ones they were trained with; on narrow groupings
  (8 vs 64 points) the eval logits collapse to one class. false (default): the encoder's
  BatchNorms keep the pre-trained statistics (their affine parameters still train).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from models.errors import ConfigError
from models.layers import Group
from models.peft.shared import FrozenBNStatsMixin, carry_checkpoint_identity, small_mlp

MODES = ("default", "faithful")
MASK_TERMS = ("entropy", "negative_entropy")


@dataclass(frozen=True)
class PointLoRAOptions:
    """Unset (None / ``""``) defect options follow ``mode``. ``rank`` 8 (official ``gamma``),
    ``hidden`` 32 (the prompt MLPs), ``select`` tokens per scale, ``mask_weight`` 0.004 and the
    scale-2 weight 0.25 (runner L164, model L664-665)."""

    mode: str = "default"
    rank: int = 8
    hidden: int = 32
    select: tuple = (32, 8)
    scale2_group_size: int = 64
    mask_weight: float = 0.004
    scale2_weight: float = 0.25
    mask_term: str = ""
    score_gradient: bool | None = None
    encode_scale1_separately: bool | None = None
    encoder_batch_stats: bool | None = None

    def check(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"pointlora option mode={self.mode!r} is invalid: expected one of {', '.join(MODES)}")
        if self.mask_term not in ("",) + MASK_TERMS:
            raise ConfigError(f"pointlora option mask_term={self.mask_term!r} is invalid: expected one of "
                              f"{', '.join(MASK_TERMS)}")
        for name in ("score_gradient", "encode_scale1_separately", "encoder_batch_stats"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"pointlora option {name}={value!r} is invalid: expected true or false")
        if len(self.select) != 2 or any(not isinstance(k, int) or k < 1 for k in self.select):
            raise ConfigError(f"pointlora option select={list(self.select)} is invalid: expected two positive "
                              "integers (tokens chosen at scale 1 and scale 2)")
        for name in ("rank", "hidden", "scale2_group_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pointlora option {name}={getattr(self, name)} is invalid: expected a positive integer")

    def resolved(self) -> "PointLoRAOptions":
        faithful = self.mode == "faithful"
        return PointLoRAOptions(
            self.mode, self.rank, self.hidden, tuple(self.select), self.scale2_group_size, self.mask_weight,
            self.scale2_weight, self.mask_term or ("negative_entropy" if faithful else "entropy"),
            (not faithful) if self.score_gradient is None else self.score_gradient,
            faithful if self.encode_scale1_separately is None else self.encode_scale1_separately,
            faithful if self.encoder_batch_stats is None else self.encoder_batch_stats)


class LoRALinear(nn.Module):
    """y = linear(x) + (x Aᵀ) Bᵀ + weight * prompt(x) (official ``LoRALinear``).

    ``lora_A`` (r, in) kaiming_uniform(a=√5), ``lora_B`` (out, r) zeros, ``weight`` [1] the frozen
    scalar (init 1), ``linear`` the wrapped pre-trained layer. ``merge()`` folds BA into
    ``linear.weight`` and zeroes B (the prompt branch stays: it is not linear).
    """

    def __init__(self, linear: nn.Linear, rank: int):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, linear.in_features))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank))
        self.weight = nn.Parameter(torch.ones(1))
        self.linear = linear
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.prompt: nn.Module | None = None   # set by the encoder (shared MLP, not owned here)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x) + (x @ self.lora_A.t()) @ self.lora_B.t()
        if self.prompt is not None:
            out = out + self.weight * self.prompt(x)
        return out

    @torch.no_grad()
    def merge(self) -> None:
        self.linear.weight += self.lora_B @ self.lora_A
        self.lora_B.zero_()


class MaskPredictor(nn.Module):
    """p = sigmoid(fc2(ReLU(fc1 t))): C -> C/2 -> 1, per token."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // 2)
        self.fc2 = nn.Linear(dim // 2, 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(t)))).squeeze(-1)


class LoRAEncoder(nn.Module):
    """``blocks.blocks.i`` (adopted, qkv/proj wrapped) and the four shared prompt MLPs."""

    def __init__(self, encoder: nn.Module, dim: int, rank: int, hidden: int):
        super().__init__()
        self.blocks = encoder.blocks
        self.prompt_mlp = small_mlp(dim, hidden, dim)
        self.prompt_pos_mlp = small_mlp(dim, hidden, dim)
        self.prompt_proj_mlp = small_mlp(dim, hidden, dim)
        self.prompt_qkv_mlp = small_mlp(dim, hidden, 3 * dim)
        for blk in self.blocks:
            blk.attn.qkv = LoRALinear(blk.attn.qkv, rank)
            blk.attn.proj = LoRALinear(blk.attn.proj, rank)
            # the shared MLPs are owned here; the wrappers only hold a reference outside _modules
            object.__setattr__(blk.attn.qkv, "prompt", self.prompt_qkv_mlp)
            object.__setattr__(blk.attn.proj, "prompt", self.prompt_proj_mlp)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, g: int, n_sel: int) -> torch.Tensor:
        for blk in self.blocks:
            x = x + pos
            x = torch.cat([x[:, :1], x[:, 1:g + 1] + self.prompt_mlp(x[:, 1:g + 1]),
                           x[:, g + 1:] + self.prompt_pos_mlp(x[:, -n_sel:])], dim=1)
            x = blk(x)
        return x


def mask_term(p: torch.Tensor) -> torch.Tensor:
    """mean(p log(p + 1e-6) + (1 - p) log(1 - p + 1e-6)): the negative binary entropy."""
    return (p * torch.log(p + 1e-6) + (1 - p) * torch.log(1 - p + 1e-6)).mean()


class PointLoRA(FrozenBNStatsMixin, nn.Module):
    """(B, N, 3) points -> (B, K) logits; after a training forward ``auxiliary_loss()`` is the
    weighted mask term to add to the task loss."""

    def __init__(self, backbone: nn.Module, opts: PointLoRAOptions):
        super().__init__()
        cfg = backbone.cfg
        self.opts, self.cfg = opts, cfg
        dim = cfg.trans_dim
        self.cls_token, self.cls_pos = backbone.cls_token, backbone.cls_pos
        self.group_divider = backbone.group_divider
        self.encoder = backbone.encoder
        self.lora_mask_predictor = MaskPredictor(dim)
        self.pos_embed = backbone.pos_embed
        self.blocks = LoRAEncoder(backbone.blocks, dim, opts.rank, opts.hidden)
        self.norm = backbone.norm
        self.cls_head_finetune = backbone.cls_head_finetune
        self.center_divider1 = Group(cfg.num_group, cfg.group_size, knn=backbone.group_divider.knn)
        self.center_divider2 = Group(cfg.num_group // 2, opts.scale2_group_size, knn=backbone.group_divider.knn)
        self._aux: torch.Tensor | None = None
        carry_checkpoint_identity(self, backbone)

    def train(self, mode: bool = True):
        """Default mode: the frozen backbone's BatchNorms stay in eval mode (pre-trained
        statistics); faithful: train mode, as every official runner leaves them. Unless
        ``encoder_batch_stats``, the patch encoder's BatchNorms (tuned or not) stay in eval mode."""
        super().train(mode)  # FrozenBNStatsMixin: frozen BatchNorms per mode
        if mode and not self.opts.encoder_batch_stats:
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _select(self, tokens, center, k):
        """Top-k tokens by score: (selected (B,k,C), their centers (B,k,3), scores (B,G))."""
        p = self.lora_mask_predictor(tokens)
        idx = p.topk(k, dim=1).indices
        sel = tokens.gather(1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
        if self.opts.score_gradient:
            ps = p.gather(1, idx)[..., None]
            sel = sel * (ps / ps.detach())
        return sel, center.gather(1, idx[..., None].expand(-1, -1, 3)), p

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        o = self.opts
        neighborhood, center, _ = self.group_divider(pts)
        tokens = self.encoder(neighborhood)
        if o.encode_scale1_separately:
            n1, c1, _ = self.center_divider1(pts)
            t1 = self.encoder(n1)
        else:
            t1, c1 = tokens, center
        n2, c2, _ = self.center_divider2(pts)
        t2 = self.encoder(n2)
        s1, sc1, p1 = self._select(t1, c1, o.select[0])
        s2, sc2, p2 = self._select(t2, c2, o.select[1])
        m = mask_term(p1) + o.scale2_weight * mask_term(p2)
        if o.mask_term == "entropy":
            m = -m
        self._aux = o.mask_weight * m if self.training else None
        b, g = tokens.shape[:2]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens, s1, s2], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center), self.pos_embed(sc1),
                         self.pos_embed(sc2)], dim=1)
        x = self.norm(self.blocks(x, pos, g, sum(o.select)))
        return self.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1))

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The weighted mask term of the last training forward (None after an eval forward)."""
        return self._aux

    def merge(self) -> None:
        """Fold every LoRA update into its frozen weight (logits unchanged up to rounding)."""
        for m in self.modules():
            if isinstance(m, LoRALinear):
                m.merge()

    def extra_repr(self) -> str:
        o = self.opts
        return (f"rank={o.rank}, mask_term={o.mask_term!r}, score_gradient={o.score_gradient}, "
                f"encode_scale1_separately={o.encode_scale1_separately}, encoder_batch_stats={o.encoder_batch_stats}")


def is_tuned(name: str) -> bool:
    """The official filter (builder.py L53-57): ``cls``, ``prompt``, ``first_conv``,
    ``pos_embed`` or ``lora_`` in the name (``lora_`` also catches the mask predictor)."""
    return any(s in name for s in ("cls", "prompt", "first_conv", "pos_embed", "lora_"))
