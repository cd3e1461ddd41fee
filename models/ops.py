"""Point-cloud ops of the official code: farthest point sampling, kNN, gather.

Pure-PyTorch implementations that reproduce the exact semantics of the CUDA kernels the
official projects use (``pointnet2_ops.furthest_point_sample``, ``knn_cuda.KNN``) and of
Point-BERT's ``knn_point``. When the CUDA extensions are importable and the tensors are on a
CUDA device, the extensions are called instead; both paths give the same indices (up to the
1-ulp FMA differences documented for the CUDA kernels). On the CPU, FPS runs a numba-compiled
kernel when numba is installed (``models.ops_jit``, the ``jit`` extra), and on CUDA without
``pointnet2_ops`` a Triton kernel when Triton is installed (``models.ops_triton``; PyTorch's
CUDA builds ship it): the same indices again.

All functions are batched: inputs are (B, N, 3) and no Python loop runs over points (FPS
iterates over its sample count, as the kernel does).
"""
from __future__ import annotations

import importlib
import math
import warnings
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

# Extensions that imported but failed when called: name -> the error (then the pure-PyTorch
# path runs; a warning says so once per extension).
_BROKEN: dict[str, str] = {}


def _fallback(name: str, err: Exception, where: str = "on CUDA") -> None:
    """Disable a broken extension for this process and warn once."""
    if name not in _BROKEN:
        _BROKEN[name] = f"{type(err).__name__}: {err}".splitlines()[0]
        warnings.warn(f"{name} is installed but failed {where} ({_BROKEN[name]}); using the pure-PyTorch "
                      "path instead (same indices, slower)", RuntimeWarning, stacklevel=3)


_JIT_STATE: list = []   # [models.ops_jit, or None when numba is absent or broken], filled on first use
_TRITON_STATE: list = []  # [models.ops_triton, or None when Triton is absent or broken], likewise


def _load_optional(state: list, module: str, name: str, deps: tuple[str, ...]):
    """``models.<module>`` when its dependency ``name`` is installed and the module imports, else
    None. Imported on first use and kept in ``state``; missing ``deps`` mean "not installed"
    (silent), any other failure a broken install (``_fallback``: warned once)."""
    if not state:
        try:
            loaded = importlib.import_module(f"models.{module}")
        except ModuleNotFoundError as err:   # not installed: the PyTorch paths run
            if err.name not in deps:
                _fallback(name, err, "to import")
            loaded = None
        except Exception as err:  # noqa: BLE001 - installed but broken: fall back, warn once
            _fallback(name, err, "to import")
            loaded = None
        state.append(loaded)
    return None if name in _BROKEN else state[0]


def _jit():
    """``models.ops_jit`` when numba is installed and the module imports, else None (imported on
    first use: numba's import takes a fraction of a second that only FPS on the CPU needs)."""
    return _load_optional(_JIT_STATE, "ops_jit", "numba", ("numba", "llvmlite"))


def _triton():
    """``models.ops_triton`` when Triton is installed (CUDA builds of torch) and the module
    imports, else None."""
    return _load_optional(_TRITON_STATE, "ops_triton", "triton", ("triton",))


def kernels_used(device: torch.device | str | None = None) -> dict[str, str]:
    """Which implementation FPS and kNN run on ``device``: {"fps": "pointnet2_ops" | "triton" |
    "numba" | "pytorch", "knn": "knn_cuda" | "pytorch"} ("numba": the compiled CPU kernel, which
    runs for finite float32/float64 points; "triton": the CUDA kernel, for finite float32 clouds
    of up to ``models.ops_triton.MAX_POINTS`` points; others take the PyTorch paths, with the
    same indices) plus "broken": {extension: error} for extensions that imported but failed (for
    the run record)."""
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        fps = ("pointnet2_ops" if _pn2 is not None and "pointnet2_ops" not in _BROKEN else
               "triton" if _triton() is not None else "pytorch")
    else:
        fps = "numba" if _jit() is not None else "pytorch"
    out = {"fps": fps, "knn": "knn_cuda" if cuda and _KnnCuda is not None and "knn_cuda" not in _BROKEN else "pytorch"}
    if _BROKEN:
        out["broken"] = dict(_BROKEN)
    return out


def probe_kernels(device: torch.device | str) -> dict[str, str]:
    """Call each importable CUDA extension once on a tiny input (a broken build is caught here,
    with one warning, rather than mid-run); returns ``kernels_used(device)``."""
    device = torch.device(device)
    if device.type == "cuda":
        pts = torch.linspace(0.1, 1.0, 192, device=device).view(1, 64, 3)   # no RNG draw
        furthest_point_sample(pts, 8)
        knn(pts, pts[:, :8], 4)
    return kernels_used(device)


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


@lru_cache(maxsize=None)
def _fps_priority_order(n: int) -> torch.Tensor:
    """Indices 0..n-1 in the kernel's tie priority: by thread rank (``_bitrev_rank``), then row.

    Among points of equal distance the kernel picks the one whose thread has the lowest rank
    and, within that thread, the lowest row (k = row * threads + t): the first in this order.
    """
    threads = _fps_threads(n)
    rows = -(-n // threads)
    grid = torch.arange(rows * threads).view(rows, threads)
    order = grid[:, _bitrev_rank(threads).argsort()].t().reshape(-1)
    return order[order < n]


@lru_cache(maxsize=64)
def _fps_order_on(n: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """``_fps_priority_order(n)`` on ``device``, and where index 0 sits in it."""
    order = _fps_priority_order(n)
    return order.to(device), int(order.argsort()[0])


def _check_fps_args(xyz: torch.Tensor, m: int) -> None:
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"furthest_point_sample expects (B, N, 3) points, got {tuple(xyz.shape)}")
    if m < 1:
        raise ValueError(f"furthest_point_sample needs m >= 1, got {m}")
    if xyz.shape[1] == 0:
        raise ValueError("furthest_point_sample got a cloud with 0 points")


# The block-pruned path (``furthest_point_sample_blocks``): points per block, and the cloud size
# from which ``furthest_point_sample_fast`` uses it on the CPU (below it the dense loop is as fast).
FPS_BLOCK_SIZE = 64
FPS_BLOCKS_MIN_POINTS = 4096


def furthest_point_sample_fast(xyz: torch.Tensor, m: int) -> torch.Tensor:
    """Same indices as ``furthest_point_sample_reference``, faster.

    On the CPU, with finite float32/float64 points and numba installed, it runs the compiled
    block-pruned kernel (``models.ops_jit.furthest_point_sample_jit``). Otherwise, on the CPU
    with N >= ``FPS_BLOCKS_MIN_POINTS`` finite points, ``furthest_point_sample_blocks`` (only
    the blocks of points a new centre can get closer to are updated), and else
    ``furthest_point_sample_dense``. On CUDA, with finite float32 clouds of at most
    ``models.ops_triton.MAX_POINTS`` points and Triton installed, one Triton kernel
    (``models.ops_triton``); else the dense loop. All give the reference's indices.
    """
    _check_fps_args(xyz, m)
    if xyz.is_cuda and xyz.dtype == torch.float32:
        tri = _triton()
        if tri is not None and xyz.shape[1] <= tri.MAX_POINTS and bool(torch.isfinite(xyz).all()):
            order, start = _fps_order_on(xyz.shape[1], xyz.device)
            try:
                return tri.furthest_point_sample_triton(xyz, m, order, start, FPS_SKIP_MAG2)
            except torch.OutOfMemoryError:   # not Triton's fault: the dense loop would need more
                raise
            except Exception as err:  # noqa: BLE001 - a broken Triton install: fall back, warn once
                _fallback("triton", err)
    if xyz.device.type == "cpu" and bool(torch.isfinite(xyz).all()):   # both pruned paths need finite boxes
        jit = _jit() if xyz.dtype in (torch.float32, torch.float64) else None
        if jit is not None:
            try:
                return jit.furthest_point_sample_jit(xyz, m)
            except Exception as err:  # noqa: BLE001 - a broken numba install: fall back, warn once
                _fallback("numba", err, "on the CPU")
        if xyz.shape[1] >= FPS_BLOCKS_MIN_POINTS:
            return furthest_point_sample_blocks(xyz, m)
    return furthest_point_sample_dense(xyz, m)


def furthest_point_sample_dense(xyz: torch.Tensor, m: int) -> torch.Tensor:
    """Same indices as ``furthest_point_sample_reference``, 3-4x faster on the CPU.

    The points are permuted once into the kernel's tie priority order, so each step's winner
    is a plain first-occurrence ``max`` (no per-step padding, rank keys or two-level
    reduction); excluded points hold distance -1 for good. Coordinates are kept as (3, B, N),
    so a step's distances are three ops: subtract, square, and a ``sum`` over the leading axis,
    which adds the rows in sequence: ((dx*dx + dy*dy) + dz*dz) in the input dtype, the
    reference's arithmetic, so the choices are bit-for-bit the same (tests/test_fps_blocks.py).
    """
    _check_fps_args(xyz, m)
    b, n, _ = xyz.shape
    order = _fps_priority_order(n).to(xyz.device)
    # (3, B, N) in priority order; indices need no grad
    pts = xyz.detach().index_select(1, order).permute(2, 0, 1).contiguous()
    temp = torch.full((b, n), 1e10, dtype=xyz.dtype, device=xyz.device)
    temp.masked_fill_((pts * pts).sum(0) <= FPS_SKIP_MAG2, -1.0)
    start = int(order.argsort()[0])  # where index 0 is
    out = torch.empty(m, b, dtype=torch.long, device=xyz.device)  # step-major: a step writes one row
    out[0] = start
    best = torch.empty(b, dtype=xyz.dtype, device=xyz.device)
    diff, d = torch.empty_like(pts), torch.empty_like(temp)
    for j in range(1, m):
        c = pts.gather(2, out[j - 1].view(1, b, 1).expand(3, b, 1))  # (3, B, 1): the last chosen point
        torch.sub(pts, c, out=diff)
        diff.mul_(diff)
        torch.sum(diff, 0, out=d)
        torch.minimum(temp, d, out=temp)
        torch.max(temp, 1, out=(best, out[j]))  # first maximum = the kernel's winner
    # A cloud with only excluded points (all at -1; a chosen point is at 0 otherwise): the kernel
    # reports index 0 at every step.
    out[:, (temp < 0).all(1)] = start
    return order[out.t()]


def _spread_bits_10(v: torch.Tensor) -> torch.Tensor:
    """Spread the low 10 bits of int32 ``v`` to every third bit (Morton interleaving)."""
    v = (v | (v << 16)) & 0x030000FF
    v = (v | (v << 8)) & 0x0300F00F
    v = (v | (v << 4)) & 0x030C30C3
    return (v | (v << 2)) & 0x09249249


def _morton_order(p: torch.Tensor) -> torch.Tensor:
    """(B, M, 3) -> (B, M) indices sorting each cloud along a Z-order (Morton) curve on a
    1024^3 grid over the cloud's bounding box: consecutive runs are spatially compact."""
    lo, hi = p.amin(1, keepdim=True), p.amax(1, keepdim=True)
    q = ((p - lo) * (1023.0 / (hi - lo).clamp_min(1e-30))).to(torch.int32).clamp_(0, 1023)
    code = _spread_bits_10(q[..., 0]) | (_spread_bits_10(q[..., 1]) << 1) | (_spread_bits_10(q[..., 2]) << 2)
    return code.argsort(dim=1)


def furthest_point_sample_blocks(xyz: torch.Tensor, m: int, block: int = FPS_BLOCK_SIZE) -> torch.Tensor:
    """Same indices as ``furthest_point_sample_reference``; prunes blocks of points (CPU).

    xyz (B, N, 3) -> indices (B, m) int64. Each cloud is cut once into blocks of about
    ``block`` points that are consecutive along a Morton curve (a power of two of blocks,
    padding points are copies of point 0 that are never chosen). Per step, a block is updated
    only if the squared distance from the new centre to its bounding box is below the block's
    largest current min-distance: otherwise no point of it can get closer (exact, see below),
    so later steps touch a few hundred blocks of the batch instead of every point.

    Exactness: a point's distance is ((px-cx)^2 + (py-cy)^2) + (pz-cz)^2 in the input dtype, as
    in the kernel; the box bound is the same expression on the per-axis gaps to the box
    (clamp(c, lo, hi) - c: exactly -(lo - c), -(c - hi) or 0), and rounding is monotone, so
    bound <= distance holds in floating point (both sums run x, y, z in order: ``sum(0)`` over
    the leading axis adds rows in sequence, checked in tests/test_fps_blocks.py). The winner is
    the largest min-distance, ties going to the lowest kernel priority rank
    (``_fps_priority_order``), found among the blocks holding the maximum.

    Runs on one thread (restored after): its tensors are small, so intra-op threads would
    only add a barrier to every op, and stall it badly whenever another process holds a core.
    """
    _check_fps_args(xyz, m)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fps_blocks(xyz, m, block)
    finally:
        torch.set_num_threads(threads)


def _fps_blocks(xyz: torch.Tensor, m: int, block: int) -> torch.Tensor:
    """The body of ``furthest_point_sample_blocks`` (arguments checked)."""
    b, n, _ = xyz.shape
    dev, dt = xyz.device, xyz.dtype
    pts = xyz.detach()
    order = _fps_priority_order(n).to(dev)
    rank_of = order.argsort().to(torch.int32)  # original index -> priority rank
    nb = 1 << max(0, math.ceil(math.log2(-(-n // max(int(block), 1)))))
    size = -(-n // nb)
    total = nb * size
    x, y, z = pts.unbind(-1)
    temp = torch.full((b, n), 1e10, dtype=dt, device=dev)
    temp.masked_fill_((x * x + y * y + z * z) <= FPS_SKIP_MAG2, -1.0)  # never chosen
    ranks = rank_of
    if total > n:  # pad with copies of point 0 at distance -1 (never chosen, no larger boxes)
        pts = torch.cat([pts, pts[:, :1].expand(b, total - n, 3)], 1)
        temp = torch.cat([temp, temp.new_full((b, total - n), -1.0)], 1)
        ranks = torch.cat([rank_of, rank_of[:1].expand(total - n)])
    perm = _morton_order(pts)
    flat = (perm + (torch.arange(b, device=dev) * total)[:, None]).view(-1)
    # per block: coordinates (3, B*nb, size), box (3, B, nb), min-distances, ranks, max
    coords = pts.reshape(b * total, 3).index_select(0, flat).view(b * nb, size, 3).permute(2, 0, 1).contiguous()
    lo, hi = coords.amin(2).view(3, b, nb), coords.amax(2).view(3, b, nb)
    temp = temp.view(-1).index_select(0, flat).view(b * nb, size)
    ranks = ranks[perm].view(b * nb, size)
    bmax = temp.amax(1).view(b, nb)
    bmax_flat = bmax.view(-1)
    # centres by priority rank: (3, B*N, 1), so a gather gives the broadcastable (3, B, 1)
    centres = xyz.detach().index_select(1, order).permute(2, 0, 1).reshape(3, b * n, 1).contiguous()
    cloud_off = torch.arange(b, device=dev) * n
    shift = nb.bit_length() - 1  # block id -> cloud
    rank0 = int(rank_of[0])
    big = torch.tensor(torch.iinfo(torch.int32).max, dtype=torch.int32, device=dev)
    rank = torch.full((b,), rank0, dtype=torch.int32, device=dev)
    chosen = [rank]
    c = centres.index_select(1, cloud_off + rank)
    for _ in range(1, m):
        gap = torch.clamp(c, lo, hi).sub_(c)  # per-axis gap to the box (0 inside), negated
        gap.mul_(gap)
        act = (gap.sum(0) < bmax).view(-1).nonzero().view(-1)  # blocks that can change
        d = coords.index_select(1, act)
        d.sub_(c.index_select(1, act >> shift))
        d.mul_(d)
        t = temp.index_select(0, act)
        torch.minimum(t, d.sum(0), out=t)  # sum over x, y, z in this order
        temp.index_copy_(0, act, t)
        bmax_flat.index_copy_(0, act, t.amax(1))
        best = bmax.amax(1, keepdim=True)
        cand = (bmax == best).view(-1).nonzero().view(-1)
        if nb > 1 and cand.numel() == b:  # one block per cloud holds the maximum
            rank = torch.where(temp.index_select(0, cand) == best, ranks.index_select(0, cand), big).amin(1)
        else:  # several blocks tie (or a cloud has only excluded points)
            cloud = cand >> shift
            per_block = torch.where(temp.index_select(0, cand) == best.index_select(0, cloud),
                                    ranks.index_select(0, cand), big).amin(1)
            rank = big.expand(b).clone().scatter_reduce_(0, cloud, per_block, "amin")
            # only excluded points left: the kernel reports index 0
            rank = torch.where(best.view(-1) < 0, rank0, rank).to(torch.int32)
        chosen.append(rank)
        c = centres.index_select(1, cloud_off + rank)
    return order[torch.stack(chosen, 1).long()]


@torch.compiler.disable
def furthest_point_sample(xyz: torch.Tensor, m: int) -> torch.Tensor:
    """FPS indices (B, m) int64; pointnet2_ops on CUDA when installed, else the emulation.

    Runs eagerly under ``torch.compile`` (a graph break): the kernel loops over the sample
    count, which the compiler would unroll, and it has no gradient to fuse.
    """
    if _pn2 is not None and xyz.is_cuda and "pointnet2_ops" not in _BROKEN:
        try:
            return _pn2.furthest_point_sample(xyz.float().contiguous(), m).long()
        except Exception as err:  # noqa: BLE001 - importable but broken: fall back, warn once
            _fallback("pointnet2_ops", err)
    return furthest_point_sample_fast(xyz, m)


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
    selection (seen as the (k+1)-th smallest value equalling the k-th) fall back to a full
    stable argsort, so the answer equals ``argsort(d2, stable=True)[..., :k]`` everywhere.
    """
    n = d2.shape[-1]
    if k > n:
        raise ValueError(f"kNN asked for k={k} neighbours among only {n} reference points")
    vals, idx = d2.topk(min(k + 1, n), dim=-1, largest=False, sorted=True)
    ambiguous = None
    if k < n:
        ambiguous = vals[..., k] == vals[..., k - 1]
        vals, idx = vals[..., :k], idx[..., :k]
    # order within the selection by (value, index)
    by_index = idx.sort(dim=-1)
    idx = by_index.values
    vals = vals.gather(-1, by_index.indices)
    order = vals.argsort(dim=-1, stable=True)
    idx = idx.gather(-1, order)
    if ambiguous is not None and ambiguous.any():
        rows = ambiguous.nonzero(as_tuple=True)
        idx[rows] = d2[rows].argsort(dim=-1, stable=True)[..., :k]
    return idx


def knn_squared_distance(ref: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """KNN_CUDA's per-pair squared distance: (dx*dx + dy*dy) + dz*dz with d = ref - query.

    (B, M, N), accumulated in place one coordinate at a time: no (B, M, N, 3) difference tensor.
    """
    if ref.shape[-1] != 3 or query.shape[-1] != 3:
        raise ValueError(f"kNN expects (B, N, 3) and (B, M, 3) points, got {tuple(ref.shape)} "
                         f"and {tuple(query.shape)}")
    r, q = ref.unbind(-1), query.unbind(-1)
    if torch.is_grad_enabled() and (ref.requires_grad or query.requires_grad):
        dx, dy, dz = (r[i][:, None, :] - q[i][:, :, None] for i in range(3))
        return (dx * dx + dy * dy) + dz * dz  # differentiable (same arithmetic)
    d = r[0][:, None, :] - q[0][:, :, None]
    d.mul_(d)
    t = r[1][:, None, :] - q[1][:, :, None]
    t.mul_(t)
    d.add_(t)
    torch.sub(r[2][:, None, :], q[2][:, :, None], out=t)
    t.mul_(t)
    return d.add_(t)


@torch.compiler.disable
def knn(ref: torch.Tensor, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``knn_cuda.KNN(k, transpose_mode=True)(ref, query)``: (dist (B,M,k), idx (B,M,k)).

    Ascending Euclidean distance, ties broken by lower reference index; a query that is a
    reference point gets itself first. Runs eagerly under ``torch.compile`` (a graph break):
    its tie check reads a value back to the host, and the extension is opaque to the compiler.
    """
    if _KnnCuda is not None and ref.is_cuda and "knn_cuda" not in _BROKEN:
        try:
            dist, idx = _KnnCuda(k=k, transpose_mode=True)(ref.contiguous(), query.contiguous())
            return dist, idx.long()
        except Exception as err:  # noqa: BLE001 - importable but broken: fall back, warn once
            _fallback("knn_cuda", err)
    return knn_torch(ref, query, k)


def knn_torch(ref: torch.Tensor, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pure-PyTorch path of ``knn`` (any device): same answers as knn_cuda."""
    d2 = knn_squared_distance(ref, query)
    idx = _stable_smallest(d2, k)
    return d2.gather(-1, idx).sqrt(), idx


def square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Squared distances by the expansion -2 a.b + |a|^2 + |b|^2 (Point-BERT / PointNet++)."""
    # in place on the product (matmul's backward needs only its inputs): the same values as
    # -2 * (src @ dst^T), then + |a|^2, then + |b|^2, without two more (B, N, M) buffers
    dist = torch.matmul(src, dst.transpose(1, 2)).mul_(-2)
    dist.add_((src**2).sum(-1)[:, :, None])
    return dist.add_((dst**2).sum(-1)[:, None, :])


def knn_point(k: int, xyz: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Point-BERT ``knn_point``: the k nearest of xyz for each center, order unspecified."""
    if k > xyz.shape[1]:
        raise ValueError(f"knn_point asked for k={k} neighbours among only {xyz.shape[1]} points")
    return square_distance(center, xyz).topk(k, dim=-1, largest=False, sorted=False).indices
