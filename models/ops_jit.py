"""Farthest point sampling compiled with numba: the CPU fast path of ``models.ops``.

Imported by ``models.ops`` only when numba is installed (the ``jit`` extra); without it the
pure-PyTorch paths run and give the same indices. Semantics are those of the official CUDA
kernel (``pointnet2_ops.furthest_point_sample``), as emulated by
``models.ops.furthest_point_sample_reference``: start at index 0, points with |p|^2 <= 1e-3
never chosen, distances ((px-cx)^2 + (py-cy)^2) + (pz-cz)^2 in the input dtype, and ties won
by the kernel's thread priority (``models.ops._fps_priority_order``).

The kernel prunes as ``models.ops.furthest_point_sample_blocks`` does: each cloud is cut into
blocks of ``block`` points consecutive along a Morton curve; per step a block is visited only
when the squared distance from the new centre to its bounding box is below the block's largest
current min-distance (otherwise none of its points can get closer; exact, as argued there). A
visited block's points are updated in one fused pass, in scalar code with no fused
multiply-add (numba without ``fastmath``), so every distance is the reference's bit for bit.
"""
from __future__ import annotations

import numba
import numpy as np
import torch


def _fps_kernel(p, rank, temp, block, start, m, out):  # pragma: no cover - compiled by numba
    """p (B, N, 3) float: points block by block, each block in priority-rank order; rank (B, N)
    int64: each point's priority rank; temp (B, N): 1e10, or -1 for excluded points (updated in
    place); start (B,): where original point 0 sits; out (B, m) int64: the chosen ranks."""
    b_count, n = temp.shape
    nb = (n + block - 1) // block
    lo = np.empty((nb, 3), p.dtype)
    hi = np.empty((nb, 3), p.dtype)
    bmax = np.empty(nb, p.dtype)    # per block: largest min-distance ...
    barg = np.empty(nb, np.int64)   # ... and where (its lowest rank: blocks are in rank order)
    for b in range(b_count):
        for k in range(nb):
            s, e = k * block, min(k * block + block, n)
            for a in range(3):
                lo[k, a] = p[b, s, a]
                hi[k, a] = p[b, s, a]
            mx, arg = temp[b, s], s
            for i in range(s, e):
                for a in range(3):
                    v = p[b, i, a]
                    if v < lo[k, a]:
                        lo[k, a] = v
                    if v > hi[k, a]:
                        hi[k, a] = v
                if temp[b, i] > mx:
                    mx, arg = temp[b, i], i
            bmax[k] = mx
            barg[k] = arg
        cur = start[b]
        out[b, 0] = rank[b, cur]
        for j in range(1, m):
            cx, cy, cz = p[b, cur, 0], p[b, cur, 1], p[b, cur, 2]
            best, best_at, best_rank = -np.inf, start[b], n
            for k in range(nb):
                # per-axis gap from the centre to the block's box (0 inside): a lower bound
                gx = cx - cx
                if cx < lo[k, 0]:
                    gx = lo[k, 0] - cx
                elif cx > hi[k, 0]:
                    gx = cx - hi[k, 0]
                gy = cy - cy
                if cy < lo[k, 1]:
                    gy = lo[k, 1] - cy
                elif cy > hi[k, 1]:
                    gy = cy - hi[k, 1]
                gz = cz - cz
                if cz < lo[k, 2]:
                    gz = lo[k, 2] - cz
                elif cz > hi[k, 2]:
                    gz = cz - hi[k, 2]
                if (gx * gx + gy * gy) + gz * gz < bmax[k]:
                    s, e = k * block, min(k * block + block, n)
                    mx, arg = -np.inf, s
                    for i in range(s, e):
                        dx = p[b, i, 0] - cx
                        dy = p[b, i, 1] - cy
                        dz = p[b, i, 2] - cz
                        d = (dx * dx + dy * dy) + dz * dz
                        t = temp[b, i]
                        if d < t:
                            t = d
                            temp[b, i] = d
                        if t > mx:  # first maximum = lowest rank within the block
                            mx, arg = t, i
                    bmax[k] = mx
                    barg[k] = arg
                v = bmax[k]
                if v > best or (v == best and rank[b, barg[k]] < best_rank):
                    best, best_at, best_rank = v, barg[k], rank[b, barg[k]]
            # only excluded points left (all at -1): the kernel reports index 0
            cur = start[b] if best < 0 else best_at
            out[b, j] = rank[b, cur]


try:
    _compiled = numba.njit(cache=True, nogil=True)(_fps_kernel)
except RuntimeError:  # no writable cache location: compile per process
    _compiled = numba.njit(nogil=True)(_fps_kernel)


DTYPES = (torch.float32, torch.float64)


def furthest_point_sample_jit(xyz: torch.Tensor, m: int, block: int = 64) -> torch.Tensor:
    """Same indices as ``models.ops.furthest_point_sample_reference``, compiled (CPU).

    xyz (B, N, 3) float32 or float64 on the CPU, finite -> indices (B, m) int64. Arguments are
    checked by the caller (``models.ops.furthest_point_sample_fast``); ``block`` (points per
    block, >= 1) is a speed knob only. The first call in a process imports numba and compiles the
    kernel (about 2.5 s on a 2-core machine; about 1 s when numba's on-disk cache beside this
    file, written by an earlier process, can be used). Runs on the calling thread and releases
    the GIL meanwhile.
    """
    from models.ops import FPS_SKIP_MAG2, _fps_priority_order, _morton_order

    if int(block) < 1:
        raise ValueError(f"furthest_point_sample_jit needs block >= 1, got {block}")

    b, n, _ = xyz.shape
    pts = xyz.detach()
    order = _fps_priority_order(n)
    rank_of = order.argsort()
    x, y, z = pts.unbind(-1)
    temp = torch.full((b, n), 1e10, dtype=pts.dtype)
    temp.masked_fill_((x * x + y * y + z * z) <= FPS_SKIP_MAG2, -1.0)   # never chosen
    # block of each point (its position along the Morton curve // block), then rank within it
    blk = torch.empty((b, n), dtype=torch.long)
    blk.scatter_(1, _morton_order(pts), (torch.arange(n) // block).expand(b, n))
    perm = (blk * n + rank_of).argsort(1)
    p = pts.gather(1, perm[..., None].expand(b, n, 3)).contiguous().numpy()
    ranks = rank_of[perm].contiguous().numpy()
    temp = temp.gather(1, perm).contiguous().numpy()
    start = (perm == 0).to(torch.uint8).argmax(1).numpy()
    out = np.empty((b, m), np.int64)
    _compiled(p, ranks, temp, int(block), start, int(m), out)
    return order[torch.from_numpy(out)]
