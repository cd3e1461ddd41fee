"""The block-pruned FPS path gives exactly the reference indices (pointnet2_ops semantics)."""
from __future__ import annotations

import pytest
import torch

from models import ops


def _clouds(kind: str, n: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Three clouds of n points of one kind."""
    if kind == "uniform":
        return torch.rand(3, n, 3, generator=gen, dtype=dtype) * 2 - 1
    if kind == "grid":  # integer coordinates: many exact distance ties, across blocks too
        return torch.randint(-2, 3, (3, n, 3), generator=gen).to(dtype)
    if kind == "near_origin":  # points FPS must skip; the first cloud has only such points
        scale = torch.tensor([0.01, 0.05, 1.0], dtype=dtype)[:, None, None]
        return (torch.rand(3, n, 3, generator=gen, dtype=dtype) * 2 - 1) * scale
    if kind == "duplicates":  # each point 5 times: npoint > distinct points once m > n / 5
        base = torch.rand(3, max(n // 5, 1), 3, generator=gen, dtype=dtype) * 2 - 1
        return base.repeat(1, 5, 1)[:, :n]
    raise ValueError(kind)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["uniform", "grid", "near_origin", "duplicates"])
@pytest.mark.parametrize("n,block", [(1, 64), (7, 4), (100, 16), (333, 64), (1000, 32)])
def test_blocks_give_the_reference_indices(dtype, kind, n, block):
    # n = 7, 100, 333, 1000 are not multiples of the block size (padding points)
    check_against_reference(ops.furthest_point_sample_blocks, dtype, kind, n, block)


def check_against_reference(fps, dtype: torch.dtype, kind: str, n: int, block: int) -> None:
    """``fps(xyz, m, block=block)`` gives the reference's int64 indices on three clouds of
    ``kind`` for several m (m > n included)."""
    gen = torch.Generator().manual_seed(n + block)
    xyz = _clouds(kind, n, dtype, gen)
    for m in sorted({1, 2, min(n, 48), n + 3}):
        want = ops.furthest_point_sample_reference(xyz, m)
        got = fps(xyz, m, block=block)
        assert got.dtype == torch.int64 and torch.equal(got, want), (kind, n, block, m)


def test_blocks_handle_a_lone_far_point_and_origin_start():
    # point 0 is excluded (at the origin) but is still the start, as in the kernel
    gen = torch.Generator().manual_seed(5)
    xyz = torch.rand(2, 300, 3, generator=gen) * 2 - 1
    xyz[:, 0] = 0.0
    xyz[1, 123] = torch.tensor([50.0, -40.0, 30.0])
    want = ops.furthest_point_sample_reference(xyz, 40)
    assert torch.equal(ops.furthest_point_sample_blocks(xyz, 40, block=8), want)
    assert want[1, 1].item() == 123


def test_fast_uses_blocks_for_large_clouds_with_the_same_indices():
    n = ops.FPS_BLOCKS_MIN_POINTS + 5
    gen = torch.Generator().manual_seed(1)
    xyz = torch.cat([torch.rand(1, n, 3, generator=gen) * 2 - 1,
                     torch.randint(-3, 4, (1, n, 3), generator=gen).float()])
    want = ops.furthest_point_sample_reference(xyz, 64)
    assert torch.equal(ops.furthest_point_sample_fast(xyz, 64), want)
    assert torch.equal(ops.furthest_point_sample_blocks(xyz, 64), want)


def test_fast_falls_back_to_the_dense_loop_on_non_finite_points():
    n = ops.FPS_BLOCKS_MIN_POINTS
    xyz = torch.rand(1, n, 3, generator=torch.Generator().manual_seed(2))
    xyz[0, 7, 1] = float("inf")  # box bounds would be meaningless
    assert torch.equal(ops.furthest_point_sample_fast(xyz, 5), ops.furthest_point_sample_dense(xyz, 5))


@pytest.mark.parametrize("shape", [(3, 500, 64), (3, 32, 2048)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sum_over_the_leading_axis_adds_rows_in_order(dtype, shape):
    # the pruned and dense paths sum squared x, y, z with .sum(0) (the dense one into out= on
    # the caller's threads); exactness needs (x + y) + z bit for bit
    gen = torch.Generator().manual_seed(3)
    mag = 10.0 ** torch.randint(-6, 6, shape, generator=gen).to(dtype)
    sq = (torch.rand(*shape, generator=gen, dtype=dtype) * mag) ** 2
    expected = (sq[0] + sq[1]) + sq[2]
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = torch.empty_like(expected)
            torch.sum(sq, 0, out=out)
            assert torch.equal(sq.sum(0), expected) and torch.equal(out, expected)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("bad", [torch.zeros(2, 5), torch.zeros(1, 5, 2)])
def test_blocks_reject_bad_shapes(bad):
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        ops.furthest_point_sample_blocks(bad, 2)


def test_blocks_run_on_one_thread_and_restore_the_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        xyz = torch.rand(2, 200, 3, generator=torch.Generator().manual_seed(4))
        assert torch.equal(ops.furthest_point_sample_blocks(xyz, 9, block=16),
                           ops.furthest_point_sample_reference(xyz, 9))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
