"""Point-cloud ops of the official code: farthest point sampling, kNN, gather.

Pure-PyTorch implementations that reproduce the exact semantics of the CUDA kernels the
official projects use (``pointnet2_ops.furthest_point_sample``, ``knn_cuda.KNN``) and of
Point-BERT's ``knn_point``. When the CUDA extensions are importable and the tensors are on a
CUDA device, the extensions are called instead; both paths give the same indices (up to the
1-ulp FMA differences the spec mentions for the CUDA kernels).

All functions are batched: inputs are (B, N, 3) and no Python loop runs over points (FPS
iterates over its sample count, as the kernel does).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

try:  # optional CUDA kernels of the official code
    from pointnet2_ops import pointnet2_utils as _pn2
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _pn2 = None
try:
    from knn_cuda import KNN as _KnnCuda
except Exception:  # noqa: BLE001
    _KnnCuda = None

# pointnet2_ops ignores points with |p|^2 <= this (a ball around the origin): they are
# never selected and never update their distance.
FPS_SKIP_MAG2 = 1e-3


def _fps_threads(n: int) -> int:
    """Thread count of the pointnet2 kernel's block: min(2^floor(log2 n), 512), as in C."""
    pow_2 = int(math.log(n) / math.log(2.0)) if n > 0 else 0
    return max(min(1 << pow_2, 512), 1)


@lru_cache(maxsize=None)
def _bitrev_rank(threads: int) -> torch.Tensor:
    """Priority of each thread in the kernel's pairwise max-reduction (lower wins ties).

    The reduction compares thread t with t + T/2, then t + T/4, ..., keeping the left one on
    equality, so among tied threads the one with the smallest bit-reversed id wins.
    """
    bits = max(threads.bit_length() - 1, 0)
    ranks = [int(format(t, f"0{bits}b")[::-1], 2) if bits else 0 for t in range(threads)]
    return torch.tensor(ranks, dtype=torch.long)


def furthest_point_sample_reference(xyz: torch.Tensor, m: int) -> torch.Tensor:
    """Iterative FPS with the pointnet2 kernel's exact start, skip and tie rules.

    xyz (B, N, 3) -> indices (B, m) int64. Start at index 0; points with |p|^2 <= 1e-3 are
    never chosen; ties are resolved as the kernel's thread layout does (see ``_bitrev_rank``).
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"furthest_point_sample expects (B, N, 3) points, got {tuple(xyz.shape)}")
    b, n, _ = xyz.shape
    if m < 1:
        raise ValueError(f"furthest_point_sample needs m >= 1, got {m}")
    out = torch.zeros(b, m, dtype=torch.long, device=xyz.device)
    if n == 0:
        raise ValueError("furthest_point_sample got a cloud with 0 points")
    threads = _fps_threads(n)
    rows = -(-n // threads)
    pad = rows * threads - n
    x, y, z = (xyz[..., i].contiguous() for i in range(3))
    excluded = (x * x + y * y + z * z) <= FPS_SKIP_MAG2
    if pad:
        excluded = torch.cat([excluded, excluded.new_ones(b, pad)], dim=1)
    temp = torch.full((b, rows * threads), 1e10, dtype=xyz.dtype, device=xyz.device)
    rank = _bitrev_rank(threads).to(xyz.device)
    neg_one = torch.tensor(-1.0, dtype=xyz.dtype, device=xyz.device)
    batch = torch.arange(b, device=xyz.device)
    old = torch.zeros(b, dtype=torch.long, device=xyz.device)
    for j in range(1, m):
        dx = x - x[batch, old, None]
        dy = y - y[batch, old, None]
        dz = z - z[batch, old, None]
        d = (dx * dx + dy * dy) + dz * dz
        if pad:
            d = torch.cat([d, d.new_zeros(b, pad)], dim=1)
        temp = torch.minimum(temp, d)
        cand = torch.where(excluded, neg_one, temp).view(b, rows, threads)
        col_max, col_arg = cand.max(dim=1)  # first (lowest k) max per thread
        best = col_max.max(dim=1, keepdim=True).values
        key = torch.where(col_max == best, rank, threads)
        winner = key.argmin(dim=1)
        row = col_arg[batch, winner]
        old = row * threads + winner
        # A thread with only excluded points reports index 0, as the kernel's besti does.
        old = torch.where(best.squeeze(1) < 0, torch.zeros_like(old), old)
        out[:, j] = old
    return out


def furthest_point_sample(xyz: torch.Tensor, m: int) -> torch.Tensor:
    """FPS indices (B, m) int64; pointnet2_ops on CUDA when installed, else the emulation."""
    if _pn2 is not None and xyz.is_cuda:
        return _pn2.furthest_point_sample(xyz.float().contiguous(), m).long()
    return furthest_point_sample_reference(xyz, m)


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points (B, N, C), idx (B, ...) -> (B, ..., C); exact copy, gradient scatter-adds."""
    b = points.shape[0]
    batch = torch.arange(b, device=points.device).view(b, *([1] * (idx.dim() - 1)))
    return points[batch, idx]


def fps(xyz: torch.Tensor, m: int) -> torch.Tensor:
    """The official ``misc.fps``: the FPS-selected points themselves, (B, m, 3)."""
    return gather_points(xyz, furthest_point_sample(xyz, m))


def _stable_smallest(d2: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k smallest values per row, ascending, ties by lower index (stable sort).

    topk does the heavy lifting; rows where the k-th value is tied with values outside the
    selection fall back to a full stable argsort, so the answer equals
    ``argsort(d2, stable=True)[..., :k]`` everywhere.
    """
    n = d2.shape[-1]
    if k > n:
        raise ValueError(f"kNN asked for k={k} neighbours among only {n} reference points")
    vals, idx = d2.topk(k, dim=-1, largest=False, sorted=True)
    # order within the selection by (value, index)
    by_index = idx.sort(dim=-1)
    idx = by_index.values
    vals = vals.gather(-1, by_index.indices)
    order = vals.argsort(dim=-1, stable=True)
    idx = idx.gather(-1, order)
    kth = vals.gather(-1, order[..., -1:])
    ambiguous = (d2 <= kth).sum(dim=-1) > k
    if ambiguous.any():
        rows = ambiguous.nonzero(as_tuple=True)
        idx[rows] = d2[rows].argsort(dim=-1, stable=True)[..., :k]
    return idx


def knn_squared_distance(ref: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """KNN_CUDA's per-pair squared distance: (dx*dx + dy*dy) + dz*dz with d = ref - query."""
    diff = ref[:, None, :, :] - query[:, :, None, :]  # (B, M, N, 3)
    dx, dy, dz = diff.unbind(-1)
    return (dx * dx + dy * dy) + dz * dz


def knn(ref: torch.Tensor, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``knn_cuda.KNN(k, transpose_mode=True)(ref, query)``: (dist (B,M,k), idx (B,M,k)).

    Ascending Euclidean distance, ties broken by lower reference index; a query that is a
    reference point gets itself first.
    """
    if _KnnCuda is not None and ref.is_cuda:
        dist, idx = _KnnCuda(k=k, transpose_mode=True)(ref.contiguous(), query.contiguous())
        return dist, idx.long()
    d2 = knn_squared_distance(ref, query)
    idx = _stable_smallest(d2, k)
    return d2.gather(-1, idx).sqrt(), idx


def square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Squared distances by the expansion -2 a.b + |a|^2 + |b|^2 (Point-BERT / PointNet++)."""
    dist = -2 * torch.matmul(src, dst.transpose(1, 2))
    dist = dist + (src**2).sum(-1)[:, :, None]
    dist = dist + (dst**2).sum(-1)[:, None, :]
    return dist


def knn_point(k: int, xyz: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Point-BERT ``knn_point``: the k nearest of xyz for each center, order unspecified."""
    if k > xyz.shape[1]:
        raise ValueError(f"knn_point asked for k={k} neighbours among only {xyz.shape[1]} points")
    return square_distance(center, xyz).topk(k, dim=-1, largest=False, sorted=False).indices
