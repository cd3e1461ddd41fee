"""PointGST (Point cloud Graph Spectral Tuning, TPAMI 2025) on a frozen Point-MAE / Point-BERT.

Source: jerryfeng2003/PointGST@7fbe92f, models/PointTransformer.py L131-331 (``Block``,
``PointTransformer_PGST``), models/PGST.py L6-101 (``PCSA``, the graph basis), models/z_order.py.

Per forward, from the patch centers (B, G, 3):
* a global graph basis U (B, G, G): eigenvectors of the normalised Laplacian
  L = I - D^-1/2 W D^-1/2 with W = 1 / (dist / m + I), m a distance scale;
* z-order the centers (key on trunc(100 c), x and y swapped as in the official call), cut the
  ordered list into G / ``local`` groups of ``local`` consecutive centers and take each group's
  local basis (B, G/local, local, local).

Every block gets a parallel adapter ``gft_adapter`` (``PCSA``, rank r) fed with the residual
stream after attention: h = down(x); the point rows of h (before the SiLU) go through the graph
Fourier transform with the global and the local bases, a shared r x r Linear ``adapt1`` acts on
each spectrum (after ``norm_ly1`` / ``norm_ly2``), the inverse transform brings them back and
they are added to SiLU(h); ``up`` maps to C. Block: x1 = x + DP(Attn(LN1 x));
x2 = x1 + DP(MLP(LN2 x1)) + PCSA(x1).

Two defects of the official code, each one option (``faithful`` mode reproduces both):
* ``spectral_scale``: ``"batch_residual"`` (official) takes m as the smallest *positive*
  ``torch.cdist`` entry of the whole batch tensor; the matmul path leaves rounding residuals on
  the diagonal, so m is a residual (~1e-4) and depends on the batch. ``"per_sample"`` (default):
  exact distances and m = the smallest off-diagonal distance of each cloud (group).
* ``transform``: ``"U"`` (official, "we keep it for reproducing our results") computes the
  spectrum as U x; ``"U_T"`` (default) is the graph Fourier transform Uᵀ x, inverse U.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from models.errors import ConfigError
from models.peft.shared import FrozenBNStatsMixin, carry_checkpoint_identity

SCALES = ("per_sample", "batch_residual")
TRANSFORMS = ("U_T", "U")
MODES = ("default", "faithful")


@dataclass(frozen=True)
class PointGSTOptions:
    """``mode`` sets the defect options left unset (``""``): default -> per_sample / U_T,
    faithful -> batch_residual / U. ``rank`` r = 36 and ``local`` = 32 as every official config."""

    mode: str = "default"
    rank: int = 36
    local: int = 32
    spectral_scale: str = ""
    transform: str = ""

    def check(self) -> None:
        for name, value, valid in (("mode", self.mode, MODES), ("spectral_scale", self.spectral_scale, ("",) + SCALES),
                                   ("transform", self.transform, ("",) + TRANSFORMS)):
            if value not in valid:
                raise ConfigError(f"pointgst option {name}={value!r} is invalid: expected one of "
                                  f"{', '.join(v for v in valid if v)}")
        for name in ("rank", "local"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pointgst option {name}={getattr(self, name)} is invalid: expected a positive integer")

    def resolved(self) -> "PointGSTOptions":
        faithful = self.mode == "faithful"
        return PointGSTOptions(self.mode, self.rank, self.local,
                               self.spectral_scale or ("batch_residual" if faithful else "per_sample"),
                               self.transform or ("U" if faithful else "U_T"))


# ---------------------------------------------------------------------------------------------
# Graph basis and z-order (PGST.py L6-39, z_order.py L66-101)

def graph_basis(points: torch.Tensor, spectral_scale: str) -> torch.Tensor:
    """Eigenvectors (columns, eigenvalues ascending) of the normalised graph Laplacian of each
    point set: points (..., n, 3) -> U (..., n, n). No gradient flows (centers are data)."""
    shape = points.shape
    p = points.reshape(-1, shape[-2], 3).float()
    n = p.shape[1]
    eye = torch.eye(n, device=p.device, dtype=p.dtype)
    if spectral_scale == "batch_residual":
        d = torch.cdist(p, p)                  # float32, matmul path: residuals on the diagonal
        m = d[d > 0].min()                      # one scalar for the whole tensor
    else:
        d = torch.cdist(p, p, compute_mode="donot_use_mm_for_euclid_dist")  # exact, diagonal 0
        off = d.masked_fill(eye.bool(), float("inf"))
        off = off.masked_fill(off <= 0, float("inf"))
        m = off.flatten(1).min(dim=1).values.clamp_min(torch.finfo(p.dtype).tiny)[:, None, None]
    w = 1.0 / (d / m + eye)
    inv_sqrt = (w.sum(-1) + 1e-6).rsqrt()
    lap = eye - inv_sqrt[:, :, None] * w * inv_sqrt[:, None, :]
    _, u = torch.linalg.eigh(lap)
    return u.reshape(*shape[:-1], n)


def z_order_key(centers: torch.Tensor) -> torch.Tensor:
    """The official z-order key of centers (B, G, 3) -> (B, G) int64: c = trunc(100 c) as 16-bit
    two's complement, bits interleaved as X≪(3i+2) | Y≪(3i+1) | Z≪3i with X = c_y, Y = c_x
    (swapped, as the official call passes them), Z = c_z."""
    c = (centers * 100).long() & 0xFFFF
    xs, ys, zs = c[..., 1], c[..., 0], c[..., 2]
    key = torch.zeros_like(xs)
    for i in range(16):
        key |= ((xs >> i) & 1) << (3 * i + 2)
        key |= ((ys >> i) & 1) << (3 * i + 1)
        key |= ((zs >> i) & 1) << (3 * i)
    return key


@dataclass
class Spectra:
    """The bases a forward shares across blocks."""

    u: torch.Tensor         # (B, G, G)
    sub_u: torch.Tensor     # (B, G/local, local, local)
    order: torch.Tensor     # (B, G) z-order permutation (idx0)
    inverse: torch.Tensor   # (B, G) its inverse (idx1)


@torch.no_grad()
def make_spectra(centers: torch.Tensor, local: int, spectral_scale: str) -> Spectra:
    b, g, _ = centers.shape
    if g % local:
        raise ConfigError(f"pointgst needs the number of patches ({g}) to be a multiple of local ({local})")
    order = z_order_key(centers).argsort(dim=1, stable=True)
    inverse = order.argsort(dim=1)
    sub = centers.gather(1, order[..., None].expand(-1, -1, 3)).view(b, g // local, local, 3)
    return Spectra(graph_basis(centers, spectral_scale), graph_basis(sub, spectral_scale), order, inverse)


# ---------------------------------------------------------------------------------------------
# Adapter and block

class PCSA(nn.Module):
    """The per-block spectral adapter (official ``PCSA``, attribute ``gft_adapter``).

    x (B, 1+G, C) -> (B, 1+G, C). Parameters: ``norm_ly1`` / ``norm_ly2`` LayerNorm(r),
    ``down`` C->r (xavier weight, PyTorch-default bias), ``up`` r->C (zero), ``adapt1`` r->r
    (zero, shared by the global and the local branch).
    """

    def __init__(self, dim: int, rank: int, transform: str):
        super().__init__()
        self.norm_ly1 = nn.LayerNorm(rank)
        self.norm_ly2 = nn.LayerNorm(rank)
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        self.adapt1 = nn.Linear(rank, rank)
        self.transform = transform
        nn.init.xavier_uniform_(self.down.weight)
        for t in (self.up.weight, self.up.bias, self.adapt1.weight, self.adapt1.bias):
            nn.init.zeros_(t)

    def _spectral(self, u: torch.Tensor, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        u = u.to(x.dtype)  # the basis is float32 (as official); cast to the tokens' dtype (float64, bf16)
        forward, inverse = (u, u.transpose(-1, -2)) if self.transform == "U" else (u.transpose(-1, -2), u)
        f = forward @ x
        f = f + F.silu(self.adapt1(norm(f)))
        return inverse @ f

    def forward(self, x: torch.Tensor, s: Spectra) -> torch.Tensor:
        h = self.down(x)
        b, g = x.shape[0], s.order.shape[1]
        xp = h[:, -g:]
        h = F.silu(h)
        glob = self._spectral(s.u, xp, self.norm_ly1)
        n_sub, local = s.sub_u.shape[1], s.sub_u.shape[2]
        r = xp.shape[-1]
        sub = xp.gather(1, s.order[..., None].expand(-1, -1, r)).view(b, n_sub, local, r)
        loc = self._spectral(s.sub_u, sub, self.norm_ly2).reshape(b, g, r)
        loc = loc.gather(1, s.inverse[..., None].expand(-1, -1, r))
        h = torch.cat([h[:, :-g], h[:, -g:] + glob + loc], dim=1)
        return self.up(h)

    def extra_repr(self) -> str:
        return f"transform={self.transform!r}"


class GSTBlock(nn.Module):
    """A backbone block (``norm1``, ``norm2``, ``mlp``, ``attn`` adopted under their names) with
    the parallel ``gft_adapter`` after attention (official ``Block``, L149-156)."""

    def __init__(self, block: nn.Module, dim: int, rank: int, transform: str):
        super().__init__()
        self.norm1, self.norm2, self.mlp, self.attn = block.norm1, block.norm2, block.mlp, block.attn
        self.drop_path = block.drop_path
        self.gft_adapter = PCSA(dim, rank, transform)

    def forward(self, x: torch.Tensor, s: Spectra) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x))) + self.gft_adapter(x, s)


class GSTEncoder(nn.Module):
    """``blocks.blocks.i``; the positional embedding is re-added before every block."""

    def __init__(self, encoder: nn.Module, dim: int, rank: int, transform: str):
        super().__init__()
        self.blocks = nn.ModuleList(GSTBlock(b, dim, rank, transform) for b in encoder.blocks)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, s: Spectra) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos, s)
        return x


class PointGST(FrozenBNStatsMixin, nn.Module):
    """The backbone's modules under their own names (``cls_token``, ``encoder``, ``pos_embed``,
    ``norm``, ``cls_head_finetune`` ...) with ``blocks`` replaced by the PointGST encoder.

    (B, N, 3) points -> (B, K) logits. The head reads [cls; max over patch tokens] as the backbone.
    """

    def __init__(self, backbone: nn.Module, opts: PointGSTOptions):
        super().__init__()
        self.opts = opts
        self.cfg = backbone.cfg
        self.backbone_type = type(backbone).__name__
        for name, child in backbone.named_children():
            if name != "blocks":
                setattr(self, name, child)
            else:
                self.blocks = GSTEncoder(child, backbone.cfg.trans_dim, opts.rank, opts.transform)
        self.cls_token, self.cls_pos = backbone.cls_token, backbone.cls_pos
        self._embed, self._pool = type(backbone).embed, type(backbone).pool
        carry_checkpoint_identity(self, backbone)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        x, pos, center = self._embed(self, pts)
        spectra = make_spectra(center, self.opts.local, self.opts.spectral_scale)
        x = self.blocks(x, pos, spectra)
        return self.cls_head_finetune(self._pool(self, x))

    def extra_repr(self) -> str:
        o = self.opts
        return f"rank={o.rank}, local={o.local}, spectral_scale={o.spectral_scale!r}, transform={o.transform!r}"


def is_tuned(name: str) -> bool:
    """The official filter (builder.py L138-146): names containing ``adapt`` or ``cls``."""
    return "adapt" in name or "cls" in name
