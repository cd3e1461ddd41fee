"""IDPT's prompt generator: a DGCNN over the point tokens in feature space (``DGCNNView``,
zyh16143998882/ICCV23-IDPT models/dgcnn.py L42-133).

Input Y (B, C, N): the N point tokens of the block before the prompt layer, without pos.
Three EdgeConv stages, each Conv2d(2C -> C, 1x1, no bias), BN2d, LeakyReLU(0.2), max over the
k = 20 neighbours; the kNN is recomputed on each stage's input, in feature space (the point is
its own neighbour). Then Conv1d(3C -> C, no bias), BN1d, LeakyReLU, max over N -> (B, 1, C).
Each BN is registered twice, as ``bn{1,2,3,5}`` and inside ``conv{1,2,3,5}``
(``conv1.1``), as in the official module, so the state dict carries both keys (``aliases=False``
registers them once).
"""
from __future__ import annotations

import torch
from torch import nn


def knn_features(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, N, k) of the k nearest points of each point in feature space.

    Score -||x_i - x_j||^2 by the official expansion -||x_i||^2 + 2 x_i.x_j - ||x_j||^2; topk
    largest (ties: ``torch.topk``'s order, as the official code)."""
    inner = 2 * torch.matmul(x.transpose(2, 1), x)
    sq = (x ** 2).sum(dim=1, keepdim=True)
    score = -sq + inner - sq.transpose(2, 1)
    return score.topk(k=k, dim=-1).indices


def graph_feature(x: torch.Tensor, k: int) -> torch.Tensor:
    """Edge features [x_j - x_i; x_i] (B, 2C, N, k) of x (B, C, N)."""
    b, c, n = x.shape
    idx = knn_features(x, k)
    pts = x.transpose(1, 2)                                      # (B, N, C)
    flat = (idx + torch.arange(b, device=x.device)[:, None, None] * n).reshape(-1)
    neighbours = pts.reshape(b * n, c)[flat].view(b, n, k, c)
    centre = pts[:, :, None].expand(b, n, k, c)
    return torch.cat([neighbours - centre, centre], dim=3).permute(0, 3, 1, 2).contiguous()


class DGCNNPrompt(nn.Module):
    """(B, C, N) point tokens -> (B, 1, C) prompt token."""

    def __init__(self, dim: int = 384, k: int = 20, aliases: bool = True):
        super().__init__()
        self.k = k
        bns = [nn.BatchNorm2d(dim), nn.BatchNorm2d(dim), nn.BatchNorm2d(dim), nn.BatchNorm1d(dim)]
        if aliases:
            self.bn1, self.bn2, self.bn3, self.bn5 = bns
        act = [nn.LeakyReLU(negative_slope=0.2) for _ in range(4)]
        self.conv1 = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), bns[0], act[0])
        self.conv2 = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), bns[1], act[1])
        self.conv3 = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), bns[2], act[2])
        self.conv5 = nn.Sequential(nn.Conv1d(3 * dim, dim, 1, bias=False), bns[3], act[3])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        f1 = self.conv1(graph_feature(y, self.k)).max(dim=-1).values
        f2 = self.conv2(graph_feature(f1, self.k)).max(dim=-1).values
        f3 = self.conv3(graph_feature(f2, self.k)).max(dim=-1).values
        f = self.conv5(torch.cat([f1, f2, f3], dim=1))           # (B, C, N)
        return f.max(dim=-1).values[:, None]
