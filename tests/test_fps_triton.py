"""The Triton FPS (models.ops_triton, CUDA) gives exactly the reference indices, and
``furthest_point_sample_fast`` uses it on CUDA, falling back to the dense loop when it cannot
(more than MAX_POINTS points, non-finite points, other dtypes). Needs a GPU and Triton."""
from __future__ import annotations

import pytest
import torch

from models import ops
from tests.test_fps_blocks import _clouds

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
ops_triton = pytest.importorskip("models.ops_triton", reason="Triton is not installed")


@pytest.mark.parametrize("kind", ["uniform", "grid", "near_origin", "duplicates"])
@pytest.mark.parametrize("n", [1, 7, 100, 333, 1000, 2048])
def test_triton_gives_the_reference_indices(kind, n):
    gen = torch.Generator().manual_seed(n)
    xyz = _clouds(kind, n, torch.float32, gen)
    for m in sorted({1, 2, min(n, 48), n + 3}):
        want = ops.furthest_point_sample_reference(xyz, m)   # on the CPU
        got = ops.furthest_point_sample_fast(xyz.cuda(), m)
        assert got.is_cuda and got.dtype == torch.int64 and torch.equal(got.cpu(), want), (kind, n, m)
    assert "triton" not in ops._BROKEN   # the kernel ran (a fallback would give the same indices)


@pytest.mark.parametrize("n,m", [(2048, 2048), (8192, 1024)])
def test_triton_matches_the_dense_loop_on_full_size_clouds(n, m):
    gen = torch.Generator().manual_seed(3)
    xyz = (torch.rand(8, n, 3, generator=gen) * 2 - 1).cuda()
    xyz[1, ::5] = 0.0  # excluded points
    xyz[2] = torch.randint(-4, 5, (n, 3), generator=gen).float().cuda() * 0.25  # many exact ties
    order, start = ops._fps_order_on(n, xyz.device)
    got = ops_triton.furthest_point_sample_triton(xyz, m, order, start, ops.FPS_SKIP_MAG2)
    assert torch.equal(got, ops.furthest_point_sample_dense(xyz, m))


def test_fast_falls_back_to_the_dense_loop_when_triton_cannot(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    big = (torch.rand(1, ops_triton.MAX_POINTS + 1, 3, generator=gen) * 2 - 1).cuda()
    calls = []
    real = ops_triton.furthest_point_sample_triton
    monkeypatch.setattr(ops_triton, "furthest_point_sample_triton", lambda *a: calls.append(1) or real(*a))
    assert torch.equal(ops.furthest_point_sample_fast(big, 16), ops.furthest_point_sample_dense(big, 16))
    nan = big[:, :100].clone()
    nan[0, 5, 1] = float("nan")
    assert torch.equal(ops.furthest_point_sample_fast(nan, 16), ops.furthest_point_sample_dense(nan, 16))
    f64 = big[:, :100].double()
    assert torch.equal(ops.furthest_point_sample_fast(f64, 16), ops.furthest_point_sample_dense(f64, 16))
    assert calls == []
    ops.furthest_point_sample_fast(big[:, :100].contiguous(), 16)
    assert calls == [1]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_runs_on_the_points_device_not_the_current_one():
    gen = torch.Generator().manual_seed(6)
    xyz = torch.rand(4, 2048, 3, generator=gen) * 2 - 1
    torch.cuda.set_device(0)
    got = ops.furthest_point_sample_fast(xyz.to("cuda:1"), 128)
    assert got.device == torch.device("cuda:1") and "triton" not in ops._BROKEN
    assert torch.equal(got.cpu(), ops.furthest_point_sample_dense(xyz, 128))
