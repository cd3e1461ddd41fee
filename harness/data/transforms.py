"""Train-time sampling and augmentations of the official runners (plain and "-aug").

They act on whole batches (B, N, C) of torch tensors, on any device, out of place. Only the
xyz channels (the first 3) are scaled and translated; a rotation also turns normals
(channels 3:6) when present. Every random draw goes through the explicit `generator`, so a
seeded run repeats exactly.
"""
from __future__ import annotations

import math

import torch

from models.ops import furthest_point_sample, gather_points

# The official point_all for each npoints (FPS this many, then keep a random npoints subset).
POINT_ALL = {1024: 1200, 2048: 2400, 4096: 4800, 8192: 8192}


def _uniform(shape, low: float, high: float, generator: torch.Generator,
             like: torch.Tensor) -> torch.Tensor:
    """U(low, high) drawn on the generator's device, then moved next to `like`."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype)


def point_all_for(npoints: int, n: int) -> int:
    """How many points the runner FPS-samples before subsetting, capped at the stored n."""
    if npoints not in POINT_ALL:
        raise ValueError(f"npoints={npoints} has no official point_all; use one of "
                         f"{sorted(POINT_ALL)}")
    if npoints > n:
        raise ValueError(f"npoints={npoints} is more than the {n} points the clouds hold")
    return min(POINT_ALL[npoints], n)


def fps_points(points: torch.Tensor, m: int) -> torch.Tensor:
    """The m furthest points of each cloud (FPS on xyz, all channels gathered): (B, m, C)."""
    return gather_points(points, furthest_point_sample(points[..., :3].contiguous(), m))


def random_subset(points: torch.Tensor, npoints: int, generator: torch.Generator
                  ) -> torch.Tensor:
    """npoints distinct positions, one random choice shared by the whole batch: (B, npoints, C).

    Like the official `np.random.choice(point_all, npoints, replace=False)`, the chosen
    positions come in random order.
    """
    m = points.shape[1]
    if npoints > m:
        raise ValueError(f"cannot choose {npoints} distinct points out of {m}")
    keep = torch.randperm(m, generator=generator, device=generator.device)[:npoints]
    return points.index_select(1, keep.to(points.device))


def sample_points(points: torch.Tensor, npoints: int, point_all: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The official train-time sampling: FPS to point_all, then one shared random subset.

    `point_all` defaults to POINT_ALL[npoints] capped at the cloud size; `generator` is
    required (a default would hide unseeded randomness). For voting, call `fps_points` once
    and `random_subset` per vote instead.
    """
    if generator is None:
        raise TypeError("sample_points needs an explicit torch.Generator")
    if point_all is None:
        point_all = point_all_for(npoints, points.shape[1])
    return random_subset(fps_points(points, point_all), npoints, generator)


def scale_and_translate(points: torch.Tensor, *, generator: torch.Generator,
                        scale_low: float = 2.0 / 3.0, scale_high: float = 3.0 / 2.0,
                        translate_range: float = 0.2) -> torch.Tensor:
    """`PointcloudScaleAndTranslate`: per sample, xyz * s + t with s ~ U(low, high)^3
    (anisotropic) and t ~ U(-range, range)^3."""
    b = points.shape[0]
    scale = _uniform((b, 1, 3), scale_low, scale_high, generator, points)
    shift = _uniform((b, 1, 3), -translate_range, translate_range, generator, points)
    out = points.clone()
    out[..., :3] = points[..., :3] * scale + shift
    return out


def rotation_y(angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices about the y (up) axis, (..., 3, 3): expm of the skew of (0, angle, 0)."""
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    rows = [torch.stack([c, zero, s], -1), torch.stack([zero, one, zero], -1),
            torch.stack([-s, zero, c], -1)]
    return torch.stack(rows, -2)


def rotate_y(points: torch.Tensor, *, generator: torch.Generator, per_sample: bool = True,
             low: float = 0.0, high: float = 2.0 * math.pi) -> torch.Tensor:
    """Rotation only, about y: points @ R(θ), θ ~ U(low, high).

    ``per_sample=True`` is the IDPT / PPT ``PointcloudRotate`` (one θ ~ U(0, 2π) per cloud,
    R = [[c, 0, s], [0, 1, 0], [-s, 0, c]] applied on the right); ``per_sample=False`` with
    (-π, π) is GAPrompt's (one matrix for the whole batch). Normals (channels 3:6) turn too.
    """
    theta = _uniform((points.shape[0] if per_sample else 1,), low, high, generator, points)
    rot = rotation_y(theta)
    out = points.clone()
    out[..., :3] = points[..., :3] @ rot
    if out.shape[-1] >= 6:
        out[..., 3:6] = points[..., 3:6] @ rot
    return out


def scale_and_rotate_y(points: torch.Tensor, *, generator: torch.Generator,
                       scale_low: float = 0.9, scale_high: float = 1.1,
                       angle: float = math.pi, per_sample: bool = False) -> torch.Tensor:
    """The "-aug" train transform: per-sample anisotropic scale U(0.9, 1.1)^3 with
    no translation, then one rotation about y, angle ~ U(-angle, angle), shared by the batch
    as in Point-PEFT's runner (`per_sample=True` draws one rotation per sample)."""
    out = scale_and_translate(points, generator=generator, scale_low=scale_low,
                              scale_high=scale_high, translate_range=0.0)
    theta = _uniform((points.shape[0] if per_sample else 1,), -angle, angle, generator, points)
    rot_t = rotation_y(theta).transpose(-1, -2)  # points @ R^T
    out[..., :3] = out[..., :3] @ rot_t
    if out.shape[-1] >= 6:
        out[..., 3:6] = out[..., 3:6] @ rot_t
    return out
