"""Farthest point sampling as one Triton kernel: the CUDA fast path of ``models.ops``.

Imported by ``models.ops`` only when Triton is installed (it ships with PyTorch's CUDA builds)
and the points are on a CUDA device; without it the pure-PyTorch paths run and give the same
indices. The PyTorch loop (``models.ops.furthest_point_sample_dense``) launches about six
kernels per sampled point, so on a GPU it is bound by launch overhead: 118.85 ms for 2048 ->
2048 points (batch 32) on an H200, which the data pipeline's FPS to ``point_all`` pays every
step, against 1.08 ms here (what ``python -m harness.bench.step_profile --fps-only`` measures). Here each
cloud is one program that keeps its points and their min-distances in registers and loops over
the m samples, so the whole FPS is one launch.

Semantics are those of the official CUDA kernel (``pointnet2_ops.furthest_point_sample``), as
emulated by ``models.ops.furthest_point_sample_reference``: start at index 0, points with
|p|^2 <= 1e-3 never chosen (a cloud of only such points reports index 0 at every step),
distances ((px-cx)^2 + (py-cy)^2) + (pz-cz)^2 in float32 with no fused multiply-add
(``enable_fp_fusion=False``), and ties won by the kernel's thread priority: the points are
permuted once into ``models.ops._fps_priority_order``, where the winner is the first maximum,
as in the dense loop. Same indices as the dense loop, bit for bit.

Limits: float32 points, finite, at most ``MAX_POINTS`` per cloud (all in registers); callers
fall back to the PyTorch paths otherwise. The launch is made on the points' device (a run on
``cuda:1`` with ``cuda:0`` current is fine).
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

MAX_POINTS = 8192  # per cloud, all in registers: 16 points (64 values) per thread at 16 warps


@triton.jit(do_not_specialize=["start"])
def _fps_kernel(pts_ptr, out_ptr, n, m, start, skip_mag2, BLOCK: tl.constexpr):  # pragma: no cover
    """pts (B, 3, n) float32 in priority order; out (B, m) int64 priority positions."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    valid = offs < n
    base = pts_ptr + b * 3 * n
    x = tl.load(base + offs, mask=valid, other=0.0)
    y = tl.load(base + n + offs, mask=valid, other=0.0)
    z = tl.load(base + 2 * n + offs, mask=valid, other=0.0)
    mag = (x * x + y * y) + z * z
    # 1e10 to start, -1 for excluded points (never chosen), -2 for the padding lanes
    temp = tl.where(valid, tl.where(mag <= skip_mag2, -1.0, 1e10), -2.0)
    out = out_ptr + b * m
    last = tl.zeros([], tl.int32) + start
    tl.store(out, last.to(tl.int64))
    for j in tl.range(1, m):
        cx = tl.load(base + last)
        cy = tl.load(base + n + last)
        cz = tl.load(base + 2 * n + last)
        dx = x - cx
        dy = y - cy
        dz = z - cz
        d = (dx * dx + dy * dy) + dz * dz
        temp = tl.minimum(temp, d)
        best, arg = tl.max(temp, axis=0, return_indices=True, return_indices_tie_break_left=True)
        # every point excluded (all at -1; a chosen point sits at 0): the kernel reports index 0
        last = tl.where(best < 0, start, arg)
        tl.store(out + j, last.to(tl.int64))


def furthest_point_sample_triton(xyz: torch.Tensor, m: int, order: torch.Tensor, start: int,
                                 skip_mag2: float) -> torch.Tensor:
    """FPS indices (B, m) int64 of float32 ``xyz`` (B, N, 3), N <= ``MAX_POINTS``.

    ``order``: the kernel's priority order of 0..N-1 on ``xyz``'s device
    (``models.ops._fps_priority_order``); ``start``: where index 0 sits in it; ``skip_mag2``:
    the exclusion threshold on |p|^2. Arguments are the caller's to check (``models.ops``).
    """
    b, n, _ = xyz.shape
    if xyz.dtype != torch.float32 or n > MAX_POINTS:
        raise ValueError(f"the Triton FPS takes float32 clouds of at most {MAX_POINTS} points, "
                         f"got {xyz.dtype} with {n}")
    pts = xyz.detach().index_select(1, order).transpose(1, 2).contiguous()  # (B, 3, N)
    out = torch.empty(b, m, dtype=torch.long, device=xyz.device)
    block = max(16, triton.next_power_of_2(n))
    warps = min(16, max(4, block // 256))
    # Triton launches on the current device, not the tensors' (CPU tensors: Triton's interpreter)
    with torch.cuda.device(xyz.device) if xyz.is_cuda else contextlib.nullcontext():
        _fps_kernel[(b,)](pts, out, n, m, start, skip_mag2, BLOCK=block, num_warps=warps,
                          enable_fp_fusion=False)
    return order[out]
