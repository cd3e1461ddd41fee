"""FPS / kNN / gather against brute-force references written as the CUDA kernels run."""
from __future__ import annotations

import math

import pytest
import torch

from models import ops


def kernel_fps(points: torch.Tensor, m: int) -> list[int]:
    """Scalar re-enactment of pointnet2's furthest_point_sampling_kernel for one cloud.

    Threads t scan k = t, t+T, ... keeping the first strict max; a pairwise reduction over
    strides T/2 .. 1 keeps the left thread on equality.
    """
    n = points.shape[0]
    threads = max(min(1 << int(math.log(n) / math.log(2.0)), 512), 1)
    pts = points.tolist()
    temp = [1e10] * n
    # distances in the input dtype, accumulated like the kernel: (dx*dx + dy*dy) + dz*dz
    p = points
    idx, old = [0], 0
    for _ in range(1, m):
        d = (p - p[old]).pow(2)
        d = (d[:, 0] + d[:, 1]) + d[:, 2]
        best_v, best_i = [-1.0] * threads, [0] * threads
        for t in range(threads):
            for k in range(t, n, threads):
                x, y, z = pts[k]
                if x * x + y * y + z * z <= ops.FPS_SKIP_MAG2:
                    continue
                temp[k] = min(temp[k], d[k].item())
                if temp[k] > best_v[t]:
                    best_v[t], best_i[t] = temp[k], k
        stride = threads // 2
        while stride >= 1:
            for t in range(stride):
                if best_v[t + stride] > best_v[t]:
                    best_v[t], best_i[t] = best_v[t + stride], best_i[t + stride]
            stride //= 2
        old = best_i[0]
        idx.append(old)
    return idx


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", [(37, 9), (128, 64), (600, 40)])
def test_fps_matches_kernel_on_random_clouds(dtype, n, m):
    gen = torch.Generator().manual_seed(n)
    # a batch of clouds with very different spreads
    scales = torch.tensor([0.05, 1.0, 30.0], dtype=dtype)[:, None, None]
    xyz = torch.rand(3, n, 3, generator=gen, dtype=dtype) * 2 - 1
    xyz = xyz * scales + 0.5 * scales
    got = ops.furthest_point_sample(xyz, m)
    assert got.dtype == torch.long and got.shape == (3, m)
    for b in range(3):
        assert got[b].tolist() == kernel_fps(xyz[b], m)
        assert got[b, 0].item() == 0


def test_fps_ties_duplicates_and_m_equal_n_follow_kernel():
    # integer grid: many exact distance ties; duplicated points; m = N exhausts distinct points
    grid = torch.stack(torch.meshgrid(*[torch.arange(4.0)] * 3, indexing="ij"), -1).view(-1, 3) + 1
    xyz = torch.cat([grid, grid[:20]])[None]  # 84 points, 20 duplicates
    n = xyz.shape[1]
    got = ops.furthest_point_sample(xyz, n)[0].tolist()
    assert got == kernel_fps(xyz[0], n)
    assert len(set(got)) < n  # not a permutation once ties at 0 start


def test_fps_skips_points_near_origin_and_starts_at_zero():
    xyz = torch.tensor([[[1.0, 0, 0], [0.0, 0.0, 0.01], [-1.0, 0, 0], [0, 2.0, 0], [0.02, 0, 0]]])
    got = ops.furthest_point_sample(xyz, 5)[0].tolist()
    assert got[0] == 0
    assert 1 not in got and 4 not in got  # |p|^2 <= 1e-3 never chosen
    assert got == kernel_fps(xyz[0], 5)


def test_fps_all_points_near_origin_returns_zeros():
    xyz = torch.zeros(2, 10, 3)
    assert ops.furthest_point_sample(xyz, 4).tolist() == [[0, 0, 0, 0]] * 2


def test_fps_cloud_of_only_excluded_points_beside_normal_clouds():
    # one all-excluded cloud must not disturb its batch neighbours, nor they it
    xyz = torch.rand(3, 50, 3, generator=torch.Generator().manual_seed(4)) * 2 - 1
    xyz[1] *= 0.01  # every |p|^2 <= 3e-4
    got = ops.furthest_point_sample(xyz, 6)
    assert got[1].tolist() == [0] * 6
    for b in (0, 2):
        assert got[b].tolist() == kernel_fps(xyz[b], 6)
    assert torch.equal(got, ops.furthest_point_sample_reference(xyz, 6))


def test_fps_ten_way_tie_is_won_by_smallest_bitreversed_thread():
    # 16 points (T=16): point 0 far away, 8 equidistant points at indices 1..8 -> tie
    pts = torch.zeros(16, 3)
    pts[0] = torch.tensor([0.0, 0.0, 10.0])
    for k in range(1, 16):
        ang = 2 * math.pi * k / 16
        pts[k] = torch.tensor([math.cos(ang), math.sin(ang), 0.0])  # all at the same distance from p0
    got = ops.furthest_point_sample(pts[None], 3)[0].tolist()
    assert got == kernel_fps(pts, 3)


def brute_knn(ref, query, k):
    d2 = ops.knn_squared_distance(ref, query)
    idx = d2.argsort(dim=-1, stable=True)[..., :k]
    return d2.gather(-1, idx).sqrt(), idx


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_matches_stable_sort_with_ties_and_duplicates(dtype):
    gen = torch.Generator().manual_seed(1)
    ref = torch.randint(0, 3, (4, 50, 3), generator=gen).to(dtype)  # only 27 distinct points
    ref[1] *= 100.0
    query = ref[:, :7]
    for k in (1, 5, 32, 50):  # k above the 27 distinct positions
        dist, idx = ops.knn(ref, query, k)
        bd, bi = brute_knn(ref, query, k)
        assert torch.equal(idx, bi)
        assert torch.equal(dist, bd)
        assert dist.dtype == dtype


def test_knn_self_first_and_random_clouds():
    gen = torch.Generator().manual_seed(2)
    ref = torch.randn(3, 300, 3, generator=gen)
    center = ops.fps(ref, 16)
    dist, idx = ops.knn(ref, center, 24)
    assert torch.equal(idx, brute_knn(ref, center, 24)[1])
    assert torch.all(dist[..., 0] == 0)
    assert torch.equal(ops.gather_points(ref, idx[..., 0]), center)


def test_knn_k_too_large_is_a_clear_error():
    with pytest.raises(ValueError, match="k=11.*only 10"):
        ops.knn(torch.rand(1, 10, 3), torch.rand(1, 2, 3), 11)


def test_knn_point_returns_the_k_nearest_set():
    gen = torch.Generator().manual_seed(3)
    xyz = torch.randn(2, 200, 3, generator=gen)
    center = xyz[:, :10]
    idx = ops.knn_point(16, xyz, center)
    expected = brute_knn(xyz, center, 16)[1]
    assert torch.equal(idx.sort(-1).values, expected.sort(-1).values)


def test_gather_points_copies_and_backprops_by_scatter_add():
    pts = torch.randn(2, 5, 3, requires_grad=True)
    idx = torch.tensor([[0, 0, 4], [1, 2, 2]])
    out = ops.gather_points(pts, idx)
    assert torch.equal(out[0, 1], pts[0, 0]) and torch.equal(out[1, 2], pts[1, 2])
    out.sum().backward()
    assert pts.grad[0, 0].tolist() == [2.0] * 3 and pts.grad[0, 3].tolist() == [0.0] * 3


def test_fps_points_are_gathered_centers():
    xyz = torch.randn(2, 64, 3)
    centers = ops.fps(xyz, 8)
    idx = ops.furthest_point_sample(xyz, 8)
    assert torch.equal(centers, ops.gather_points(xyz, idx))


def test_kernels_used_names_the_triton_fps_on_cuda_only_when_triton_imports(monkeypatch):
    # no GPU needed: the answer depends on what imports, not on a device being present
    monkeypatch.setattr(ops, "_pn2", None)
    monkeypatch.setattr(ops, "_TRITON_STATE", [None])      # Triton absent (CPU builds of torch)
    assert ops.kernels_used("cuda")["fps"] == "pytorch"
    monkeypatch.setattr(ops, "_TRITON_STATE", [object()])  # Triton importable
    assert ops.kernels_used("cuda")["fps"] == "triton"
    assert ops.kernels_used("cpu")["fps"] in ("numba", "pytorch")
    monkeypatch.setitem(ops._BROKEN, "triton", "RuntimeError: broken")   # failed once: PyTorch paths
    assert ops.kernels_used("cuda")["fps"] == "pytorch"
