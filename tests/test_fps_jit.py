"""The numba-compiled FPS (models.ops_jit) gives exactly the reference indices, and
``furthest_point_sample_fast`` uses it on the CPU, falling back to the PyTorch paths when it
cannot (no numba, a broken numba, non-finite points, other dtypes)."""
from __future__ import annotations

import pytest
import torch

from models import ops
from tests.test_fps_blocks import check_against_reference

ops_jit = pytest.importorskip("models.ops_jit", reason="numba is not installed (the jit extra)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["uniform", "grid", "near_origin", "duplicates"])
@pytest.mark.parametrize("n,block", [(1, 64), (7, 4), (100, 16), (333, 64), (1000, 32), (2048, 64)])
def test_jit_gives_the_reference_indices(dtype, kind, n, block):
    # n not a multiple of the block: a shorter last block; grid/duplicates: ties across blocks
    check_against_reference(ops_jit.furthest_point_sample_jit, dtype, kind, n, block)


def test_jit_on_a_large_batch_matches_the_block_pruned_path():
    gen = torch.Generator().manual_seed(11)
    xyz = torch.rand(4, 8192, 3, generator=gen) * 2 - 1
    assert torch.equal(ops_jit.furthest_point_sample_jit(xyz, 256), ops.furthest_point_sample_blocks(xyz, 256))


def test_jit_handles_a_lone_far_point_an_origin_start_and_non_contiguous_input():
    gen = torch.Generator().manual_seed(5)
    xyz = torch.rand(2, 300, 3, generator=gen) * 2 - 1
    xyz[:, 0] = 0.0      # excluded (at the origin) but still the start, as in the kernel
    xyz[1, 123] = torch.tensor([50.0, -40.0, 30.0])
    strided = torch.cat([xyz, xyz], dim=2)[..., ::2]   # same values, not contiguous
    want = ops.furthest_point_sample_reference(xyz, 40)
    assert want[1, 1].item() == 123
    assert torch.equal(ops_jit.furthest_point_sample_jit(strided, 40, block=8), want)


def test_fast_uses_the_jit_on_the_cpu_and_reports_it():
    assert ops.kernels_used("cpu")["fps"] == "numba"
    xyz = torch.rand(2, 500, 3, generator=torch.Generator().manual_seed(6))
    calls = []
    real = ops_jit.furthest_point_sample_jit

    def spy(x, m):
        calls.append(m)
        return real(x, m)
    try:
        ops_jit.furthest_point_sample_jit = spy
        got = ops.furthest_point_sample_fast(xyz, 17)
    finally:
        ops_jit.furthest_point_sample_jit = real
    assert calls == [17] and torch.equal(got, ops.furthest_point_sample_reference(xyz, 17))


@pytest.mark.parametrize("case", ["inf", "bfloat16"])
def test_fast_skips_the_jit_for_non_finite_points_and_other_dtypes(case, monkeypatch):
    xyz = torch.rand(1, 300, 3, generator=torch.Generator().manual_seed(2))
    if case == "inf":
        xyz[0, 7, 1] = float("inf")
    else:
        xyz = xyz.bfloat16()

    def boom(*_):
        raise AssertionError("the jit ran")
    monkeypatch.setattr(ops_jit, "furthest_point_sample_jit", boom)
    assert torch.equal(ops.furthest_point_sample_fast(xyz, 5), ops.furthest_point_sample_dense(xyz, 5))


def test_a_failing_jit_falls_back_with_one_warning_and_the_same_indices(monkeypatch):
    def broken(*_):
        raise RuntimeError("LLVM ERROR: something\nmore")
    monkeypatch.setattr(ops_jit, "furthest_point_sample_jit", broken)
    monkeypatch.setattr(ops, "_BROKEN", {})
    xyz = torch.rand(2, 300, 3, generator=torch.Generator().manual_seed(7))
    with pytest.warns(RuntimeWarning, match="numba is installed but failed on the CPU .*LLVM ERROR: something"):
        got = ops.furthest_point_sample_fast(xyz, 9)
    assert torch.equal(got, ops.furthest_point_sample_reference(xyz, 9))
    assert ops.kernels_used("cpu") == {"fps": "pytorch", "knn": "pytorch",
                                       "broken": {"numba": "RuntimeError: LLVM ERROR: something"}}
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # once: the second call neither warns nor tries the jit
        assert torch.equal(ops.furthest_point_sample_fast(xyz, 9), got)


def test_without_numba_the_pytorch_paths_run(monkeypatch):
    monkeypatch.setattr(ops, "_JIT_STATE", [None])
    assert ops.kernels_used("cpu")["fps"] == "pytorch"
    xyz = torch.rand(1, ops.FPS_BLOCKS_MIN_POINTS, 3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(ops.furthest_point_sample_fast(xyz, 20), ops.furthest_point_sample_reference(xyz, 20))


@pytest.mark.parametrize("block", [0, -3])
def test_jit_rejects_a_block_size_below_one(block):
    with pytest.raises(ValueError, match="block >= 1"):
        ops_jit.furthest_point_sample_jit(torch.rand(1, 10, 3), 3, block=block)
