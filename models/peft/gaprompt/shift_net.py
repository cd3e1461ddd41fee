"""GAPrompt's Point Shift Prompter and shape feature (official ``ShiftNet``, models/GAPrompt.py
L125-329 of zhoujiahuan1991/ICML2025-GAPrompt@8a26a2e): a two-level PointNet++ on the input
cloud that predicts a per-point shift and a global shape vector.

* e = [x, sin x, cos x, sin 2x, cos 2x, sin 4x, cos 4x, sin 8x, cos 8x] (27 channels);
* ``abstraction_level1``: FPS G centers, 32 nearest (KNN_CUDA order), the neighbours' absolute e
  through Conv2d 27->64->32->64 (BN2d, ReLU each), max over the 32;
* ``abstraction_level2``: FPS G/2 of those centers, 16 nearest, their level-1 features through
  64->64->32->8, max;
* ``propagation2`` / ``propagation1``: inverse-distance interpolation (32 nearest, weights
  1 / (d² + 1e-4), expansion distances) back to the level-1 centers, then to every point,
  concatenated with the skip features, Conv1d with BN1d and ReLU;
* ``mlp_position`` (32 -> 64 -> 3): shift = x ⊙ (ρ · M(φ)); the shape vector is the level-2
  features flattened in FPS order, (B, G/2 · 8).
"""
from __future__ import annotations

import torch
from torch import nn

from models import ops


def positional_embedding(x: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """(B, N, 3) -> (B, N, 3 + 6 * levels): x, then sin / cos of 2^i x for i < levels."""
    parts = [x]
    for i in range(levels):
        parts += [torch.sin((2 ** i) * x), torch.cos((2 ** i) * x)]
    return torch.cat(parts, dim=-1)


class SetAbstraction(nn.Module):
    """FPS ``npoint`` centers, ``nsample`` nearest, shared 1x1 Conv2d / BN2d / ReLU, max."""

    def __init__(self, npoint: int, nsample: int, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.npoint, self.nsample = npoint, nsample
        chans = (in_channels,) + tuple(widths)
        self.mlp_convs = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(chans, chans[1:]))
        self.mlp_bns = nn.ModuleList(nn.BatchNorm2d(b) for b in widths)

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor):
        """xyz (B, N, 3), feats (B, N, C) -> centers (B, S, 3), features (B, S, C_out)."""
        center = ops.fps(xyz, self.npoint)
        idx = ops.knn(xyz, center, self.nsample)[1]
        h = ops.gather_points(feats, idx).permute(0, 3, 2, 1)   # (B, C, K, S)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            h = torch.relu(bn(conv(h)))
        return center, h.max(dim=2).values.transpose(1, 2)


class FeaturePropagation(nn.Module):
    """Interpolate source features to targets (k nearest, 1 / (d² + 1e-4)), concat skip, MLP."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], k: int = 32):
        super().__init__()
        self.k = k
        chans = (in_channels,) + tuple(widths)
        self.mlp_convs = nn.ModuleList(nn.Conv1d(a, b, 1) for a, b in zip(chans, chans[1:]))
        self.mlp_bns = nn.ModuleList(nn.BatchNorm1d(b) for b in widths)

    def forward(self, target, source, skip, feats):
        """target (B, N, 3), source (B, S, 3), skip (B, N, C1), feats (B, S, C2) -> (B, N, C_out)."""
        d2, idx = ops.square_distance(target, source).sort(dim=-1)
        k = min(self.k, source.shape[1])
        w = 1.0 / (d2[..., :k] + 1e-4)
        w = w / w.sum(-1, keepdim=True)
        interp = (ops.gather_points(feats, idx[..., :k]) * w[..., None]).sum(2)
        h = torch.cat([skip, interp], dim=-1).transpose(1, 2)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            h = torch.relu(bn(conv(h)))
        return h.transpose(1, 2)


class ShiftNet(nn.Module):
    """(B, N, 3) cloud -> (shifted cloud (B, N, 3), shape vector (B, G/2 · 8))."""

    def __init__(self, num_group: int, perturbation: float):
        super().__init__()
        self.perturbation = perturbation
        self.abstraction_level1 = SetAbstraction(num_group, 32, 27, (64, 32, 64))
        self.abstraction_level2 = SetAbstraction(num_group // 2, 16, 64, (64, 32, 8))
        self.propagation1 = FeaturePropagation(59, (32, 32))
        self.propagation2 = FeaturePropagation(72, (64, 32))
        self.mlp_position = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 3))
        for layer in (self.mlp_position[0], self.mlp_position[3]):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor):
        e = positional_embedding(x)
        c1, f1 = self.abstraction_level1(x, e)
        c2, f2 = self.abstraction_level2(c1, f1)
        f1 = self.propagation2(c1, c2, f1, f2)
        phi = self.propagation1(x, c1, e, f1)
        shifted = x + x * (self.perturbation * self.mlp_position(phi))
        return shifted, f2.flatten(1)
