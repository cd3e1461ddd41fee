"""Train-time sampling and augmentations of the official runners: ranges, sharing, determinism."""
import math

import pytest
import torch

from harness.data.transforms import POINT_ALL, point_all_for, random_subset, sample_points, \
    scale_and_rotate_y, scale_and_translate


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def probe_batch(b):
    """Each sample holds the origin, (1,1,1) and the unit x / y axis points."""
    pts = torch.tensor([[0.0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0]])
    return pts.expand(b, -1, -1).clone()


def test_scale_and_translate_official_ranges():
    out = scale_and_translate(probe_batch(256), generator=gen())
    shift = out[:, 0]
    scale = out[:, 1] - shift
    assert shift.abs().max() <= 0.2 and shift.abs().max() > 0.15
    assert scale.min() >= 2 / 3 and scale.max() <= 3 / 2
    assert scale.min() < 0.7 and scale.max() > 1.45  # the whole range is used
    assert (scale[:, 0] != scale[:, 1]).all()  # anisotropic
    assert len(torch.unique(scale[:, 0])) == 256  # per sample


def test_scale_and_translate_configurable_and_only_xyz():
    pts = torch.cat([probe_batch(8), torch.ones(8, 4, 3)], dim=2)
    out = scale_and_translate(pts, generator=gen(), scale_low=2.0, scale_high=2.0,
                              translate_range=0.0)
    assert torch.allclose(out[..., :3], 2 * pts[..., :3])
    assert torch.equal(out[..., 3:], pts[..., 3:])  # normals are not touched, as upstream
    assert torch.equal(pts[..., 3:], torch.ones(8, 4, 3))  # out of place


def rotation_angle(out):
    """Angle of the rotation about y, read from where the x axis point went."""
    x_axis = out[:, 2]
    return torch.atan2(-x_axis[:, 2], x_axis[:, 0])


def test_aug_rotation_shared_by_batch_and_y_only_scaled():
    pts = probe_batch(32)
    out = scale_and_rotate_y(pts, generator=gen(3))
    angle = rotation_angle(out)
    assert torch.allclose(angle, angle[0].expand(32), atol=1e-5)
    assert -math.pi <= angle[0] <= math.pi
    # rotation about y keeps y: y out = y in * per-sample scale in [0.9, 1.1]
    sy = out[:, 3, 1]
    assert torch.all((sy >= 0.9) & (sy <= 1.1)) and len(torch.unique(sy)) == 32
    assert torch.allclose(out[:, 1, 1], sy)  # the (1,1,1) point has the same y factor
    assert torch.equal(out[:, 0], torch.zeros(32, 3))  # no translation
    # xz radius of the x axis point is its x scale, within the -aug range
    r = out[:, 2, [0, 2]].norm(dim=1)
    assert torch.all((r >= 0.9 - 1e-6) & (r <= 1.1 + 1e-6))


def test_aug_rotation_angles_cover_range_and_per_sample_option():
    angles = torch.stack([rotation_angle(scale_and_rotate_y(probe_batch(2), generator=gen(s)))[0]
                          for s in range(200)])
    assert angles.min() < -2.8 and angles.max() > 2.8
    out = scale_and_rotate_y(probe_batch(16), generator=gen(), per_sample=True)
    assert len(torch.unique(rotation_angle(out))) == 16


def test_aug_rotates_normals_with_points():
    pts = torch.randn(4, 50, 3)
    both = torch.cat([pts, pts], dim=2)
    out = scale_and_rotate_y(both, generator=gen(), scale_low=1.0, scale_high=1.0)
    assert torch.allclose(out[..., :3], out[..., 3:], atol=1e-6)


def unique_cloud(b, n, seed=0):
    return torch.rand(b, n, 3, generator=gen(seed)) * 2 - 1


def test_point_all_table_and_cap():
    assert POINT_ALL == {1024: 1200, 2048: 2400, 4096: 4800, 8192: 8192}
    assert point_all_for(1024, 8192) == 1200
    assert point_all_for(2048, 2048) == 2048  # ScanObjectNN: FPS 2048 of 2048
    with pytest.raises(ValueError):
        point_all_for(1000, 8192)
    with pytest.raises(ValueError):
        point_all_for(2048, 1024)


def test_sample_points_default_point_all():
    out = sample_points(unique_cloud(1, 1300), 1024, generator=gen())
    assert out.shape == (1, 1024, 3) and len(torch.unique(out[0], dim=0)) == 1024
    with pytest.raises(TypeError, match="explicit torch.Generator"):
        sample_points(unique_cloud(1, 1300), 1024)
    assert torch.equal(sample_points(unique_cloud(1, 300), 100, 150, gen(2)),
                       sample_points(unique_cloud(1, 300), 100, 150, generator=gen(2)))


def test_sample_points_distinct_points_shared_subset():
    clouds = unique_cloud(3, 300)
    out = sample_points(clouds, 100, point_all=150, generator=gen())
    assert out.shape == (3, 100, 3)
    for b in range(3):
        assert len(torch.unique(out[b], dim=0)) == 100  # npoints distinct points
        member = (out[b][:, None] == clouds[b][None]).all(-1).any(1)
        assert member.all()
    # identical clouds give identical FPS orders, so a shared subset gives identical outputs
    same = clouds[:1].expand(4, -1, -1).contiguous()
    out = sample_points(same, 100, point_all=150, generator=gen())
    assert all(torch.equal(out[0], out[b]) for b in range(1, 4))


def test_random_subset_is_shared_and_distinct():
    idx = torch.arange(1200.0).view(1, 1200, 1).expand(5, -1, -1)
    out = random_subset(idx, 1024, gen())[..., 0]
    assert all(torch.equal(out[0], out[b]) for b in range(5))
    assert len(torch.unique(out[0])) == 1024


def test_sampling_and_transforms_are_deterministic():
    clouds = unique_cloud(2, 300, seed=1)
    for fn in (lambda g: sample_points(clouds, 100, point_all=150, generator=g),
               lambda g: scale_and_translate(clouds, generator=g),
               lambda g: scale_and_rotate_y(clouds, generator=g)):
        assert torch.equal(fn(gen(5)), fn(gen(5)))
        assert not torch.equal(fn(gen(5)), fn(gen(6)))
