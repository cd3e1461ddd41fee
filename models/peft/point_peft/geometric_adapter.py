"""The geometry-aware adapter of Point-PEFT (docs/point-peft.md §3 step 5, §3.1, §3.2, §5).

Per block, on the token sequence u = [prompts'; point tokens] (or the point tokens alone):

a. gather S groups of k tokens around S sub-centers, and the sub-center tokens c;
b. local attention inside each group: n <- n + droppath(attn1(norm3(n))) (attn1, norm3 shared);
c. pool over the group (max, or max + mean), BatchNorm + GELU (``out_transform``), + coef * c;
d. propagate back to the point tokens by inverse-distance weighting over all S sub-centers.

Everything that depends only on coordinates (FPS, kNN, IDW weights) is computed once per
forward pass in a :class:`Geometry` and shared by the blocks that use it. Rewrites that keep
the branch light without changing its maths: ``norm3`` and ``attn1.qkv`` act per token, so they
run on the L tokens before the gather (54 channels are gathered instead of 384 for the
attention); the projection's bias is constant over a group, so it is added after pooling and
n + a W^T is one ``addmm``; on the CPU the gather / addmm / pooling run over chunks of groups
that stay in cache (the (groups, k, C) tensor is the branch's dominant cost), on a GPU over all
groups at once (``groups_per_chunk``); the IDW interpolation is one
batched matmul with the precomputed weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models import ops

GEO_POOLS = ("max", "max_mean")
IDW_DISTANCES = ("expanded", "stable")
DROP_PATH_UNITS = ("group", "sample")


class LocalAttention(nn.Module):
    """The official ``Attention1``: qkv C -> 3*inner (no bias), heads x (inner/heads) dims,
    softmax scale inner**-0.5 (18**-0.5 officially, not head_dim**-0.5), proj inner -> C."""

    def __init__(self, dim: int, inner: int = 18, num_heads: int = 6):
        super().__init__()
        if inner % num_heads:
            raise ValueError(f"local attention width {inner} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.inner = inner
        self.scale = inner ** -0.5
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv (G, k, 3*inner) of already-projected group members -> (G, k, inner)."""
        g, k, _ = qkv.shape
        q, key, v = qkv.view(g, k, 3, self.num_heads, self.inner // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, key, v, scale=self.scale)
        return out.transpose(1, 2).reshape(g, k, self.inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain form on grouped tokens x (G, k, C), for reference and tests."""
        return self.proj(self.attend(self.qkv(x)))

    def extra_repr(self) -> str:
        return f"inner={self.inner}, heads={self.num_heads}, scale={self.scale:.6f}"


@dataclass
class Geometry:
    """Coordinates-only part of the geometric adapter for one forward pass.

    ``flat_idx`` (B, S, k) and ``flat_center`` (B, S) index the token sequence u flattened to
    (B * seq_len, C); ``weights`` (B, G, S) are the IDW weights from the G point tokens to the
    S sub-centers. ``with_prompts`` says whether u is [prompts'; tokens] or the tokens alone.
    """
    seq_len: int
    with_prompts: bool
    flat_idx: torch.Tensor
    flat_center: torch.Tensor
    weights: torch.Tensor


def idw_weights(xyz1: torch.Tensor, xyz2: torch.Tensor, distance: str = "stable",
                neighbors: int = 0, eps: float = 1e-8) -> torch.Tensor:
    """Inverse-distance weights (B, N, S) from targets xyz1 (B, N, 3) to sources xyz2 (B, S, 3).

    w = 1 / (d^2 + eps), normalised over the sources. ``distance="expanded"`` is the official
    |a|^2 + |b|^2 - 2 a.b (B15: about +-1e-6 instead of 0 for coincident points in float32,
    sometimes negative); ``"stable"`` sums squared coordinate differences, exact 0 for a
    coincident point, which then takes (almost) all the weight. ``neighbors`` > 0 keeps only
    that many nearest sources (0 = all, the official choice).
    """
    if distance == "expanded":
        d2 = ops.square_distance(xyz1, xyz2)
    elif distance == "stable":
        d2 = (xyz1[:, :, None, :] - xyz2[:, None, :, :]).square().sum(-1)
    else:
        raise ValueError(f"IDW distance {distance!r} is not one of {IDW_DISTANCES}")
    recip = 1.0 / (d2 + eps)
    if 0 < neighbors < d2.shape[-1]:
        keep = d2.topk(neighbors, dim=-1, largest=False).indices
        recip = torch.zeros_like(recip).scatter(-1, keep, recip.gather(-1, keep))
    return recip / recip.sum(dim=-1, keepdim=True)


def group_indices(positions: torch.Tensor, num_centers: int, k: int):
    """FPS sub-centers and kNN groups among ``positions`` (B, L, 3) (Point-PEFT's Group(S, k)).

    Returns (sub-center coordinates (B, S, 3), differentiable w.r.t. positions; FPS indices
    (B, S); kNN indices (B, S, k)), indices local to each sample.
    """
    if k > positions.shape[1]:
        raise ValueError(f"geometric adapter asks for {k} neighbours among {positions.shape[1]} tokens")
    with torch.no_grad():
        fps_idx = ops.furthest_point_sample(positions.detach(), num_centers)
    sub = ops.gather_points(positions, fps_idx)
    with torch.no_grad():
        knn_idx = ops.knn(positions.detach(), sub.detach(), k)[1]
    return sub, fps_idx, knn_idx


def make_geometry(seq_len: int, with_prompts: bool, fps_idx: torch.Tensor, knn_idx: torch.Tensor,
                  stride: int, weights: torch.Tensor) -> Geometry:
    """Flatten per-sample indices with offset b * stride.

    ``stride == seq_len`` is the correct per-sample indexing. The official prompt blocks use
    stride = number of point tokens while u is longer by the prompts (bug B1), so every sample
    b >= 1 reads tokens of its neighbours in the batch.
    """
    b = fps_idx.shape[0]
    offset = torch.arange(b, device=fps_idx.device).view(b, 1) * stride
    return Geometry(seq_len, with_prompts, knn_idx + offset[:, :, None], fps_idx + offset, weights)


def _keep_scale(groups: int, batch: int, rate: float, training: bool, unit: str,
                like: torch.Tensor) -> torch.Tensor | None:
    """Per-group stochastic-depth factor (groups,) for the local-attention residual, or None.

    ``unit="group"`` (official, B14) draws one keep/drop per group, ``"sample"`` one per
    sample (all its groups together), like the backbone's per-sample drop-path.
    """
    if rate == 0.0 or not training:
        return None
    keep = 1.0 - rate
    mask = like.new_empty(groups if unit == "group" else batch).bernoulli_(keep)
    if unit == "sample":
        mask = mask.repeat_interleave(groups // batch)
    return mask / keep


# Groups per chunk on the CPU: 4 MiB of gathered float32 tokens, so gather, add and pooling stay in
# cache (about 5% faster per Point-MAE training step than one chunk, batch 32, 2 threads).
CHUNK_VALUES = 1 << 20


def groups_per_chunk(groups: int, k: int, c: int, device_type: str) -> int:
    """How many of ``groups`` groups of k tokens of width c one chunk of the branch takes.

    On the CPU, ``CHUNK_VALUES`` gathered values (cache-sized). Elsewhere (CUDA), all of them:
    a GPU step is bound by kernel launches, not cache, and each chunk costs about 16 launches
    per block, forward and backward (Point-MAE, batch 32: 13 chunks per block, about 2,200 of
    a training step's 4,900 working ops; one chunk leaves about 2,800). The transient
    (groups, k, c) tensor is then 48 MiB in float32 for that case (2,048 groups of 16 x 384).
    """
    if device_type != "cpu":
        return max(1, groups)
    return max(1, min(groups, CHUNK_VALUES // (k * c)))


def _local_attention(u: torch.Tensor, idx: torch.Tensor, attn1: LocalAttention,
                     norm3: nn.LayerNorm) -> torch.Tensor:
    """attn1's attention inside each group, before its projection: u (B, L, C), group member
    indices idx (groups, k) into u flattened -> (groups, k, inner). norm3 and qkv are per token,
    so they run before the gather (same numbers, 1/7 of the width gathered)."""
    b, length, _ = u.shape
    groups, k = idx.shape
    qkv = attn1.qkv(norm3(u)).reshape(b * length, -1).index_select(0, idx.reshape(-1)).view(groups, k, -1)
    return attn1.attend(qkv)


class _MaxOverMembers(torch.autograd.Function):
    """``y.max(dim=1).values`` for y (groups, k, C) that keeps the argmax as uint8 for backward
    (k <= 256) instead of int64: 1/8 of the memory, the same gradient (scattered to the argmax)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        values, arg = y.max(dim=1)
        ctx.save_for_backward(arg.to(torch.uint8))
        ctx.shape = y.shape
        return values

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (arg,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).scatter_(1, arg.long().unsqueeze(1), grad.unsqueeze(1))


def max_over_members(y: torch.Tensor) -> torch.Tensor:
    """Max over the group members (dim 1) of y (groups, k, C) -> (groups, C).

    Without a gradient to route, ``amax`` (values only): on the CPU about 20x faster than
    ``max(dim=1)``, which also finds the argmax (0.14 vs 2.7 ms for (170, 16, 384), 2 threads, on
    an idle machine; about 10x with another job running).
    """
    if y.requires_grad and torch.is_grad_enabled():
        return _MaxOverMembers.apply(y) if y.shape[1] <= 256 else y.max(dim=1).values
    return y.amax(dim=1)


def geometric_branch(u: torch.Tensor, geo: Geometry, attn1: LocalAttention, norm3: nn.LayerNorm,
                     out_transform: nn.Module, *, pool: str, center_coef: float, drop_rate: float,
                     drop_unit: str, training: bool, recompute: bool = False) -> torch.Tensor:
    """Steps a-c on u (B, L, C): the pooled sub-center features v (B, S, C).

    Computed as max_k(n + drop(proj(attn(norm3(n))))): the projection's bias is constant over
    the group, so it is added after pooling, and n + a W^T is one ``addmm`` per chunk of groups.
    ``recompute``: the local attention (norm3, qkv, gather, attention) is recomputed in
    backward instead of keeping its activations (same values and gradients).
    """
    b, length, c = u.shape
    if length != geo.seq_len:
        raise RuntimeError(f"geometry built for {geo.seq_len} tokens, got {length}")
    s, k = geo.flat_idx.shape[1:]
    groups = b * s
    flat_u = u.reshape(b * length, c)
    idx = geo.flat_idx.reshape(groups, k)
    center = flat_u.index_select(0, geo.flat_center.reshape(-1)).view(b, s, c)
    if recompute and torch.is_grad_enabled():  # keeps u alone, not norm3(u), q/k/v, the output
        local = checkpoint(_local_attention, u, idx, attn1, norm3, use_reentrant=False)
    else:
        local = _local_attention(u, idx, attn1, norm3)
    scale = _keep_scale(groups, b, drop_rate, training, drop_unit, local)
    if scale is not None:
        local = local * scale.view(groups, 1, 1)
    weight_t = attn1.proj.weight.t()
    chunk = groups_per_chunk(groups, k, c, u.device.type)
    autocasting = torch.is_autocast_enabled(u.device.type)
    pooled = []
    for start in range(0, groups, chunk):
        stop = min(start + chunk, groups)
        n = flat_u.index_select(0, idx[start:stop].reshape(-1))
        a = local[start:stop].reshape(-1, local.shape[-1])
        # in place (no copy of n) except under autocast, which casts the inputs of addmm, not addmm_
        y = (torch.addmm(n, a, weight_t) if autocasting else n.addmm_(a, weight_t)).view(stop - start, k, c)
        v = max_over_members(y)
        pooled.append(v + y.mean(dim=1) if pool == "max_mean" else v)
    v = torch.cat(pooled) if len(pooled) > 1 else pooled[0]
    bias = attn1.proj.bias * (2.0 if pool == "max_mean" else 1.0)
    v = v + (bias if scale is None else scale[:, None] * bias)
    v = out_transform(v.view(b, s, c).transpose(1, 2)).transpose(1, 2)
    return v + center_coef * center


class OutTransform(nn.Sequential):
    """``out_transform``: BatchNorm1d(C) over (B, C, S) followed by exact GELU."""

    def __init__(self, dim: int):
        super().__init__(nn.BatchNorm1d(dim), nn.GELU())
