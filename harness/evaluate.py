"""Accuracy of a model on a split: the plain protocol and the official voting, and what an
evaluation is compared against (the majority-class baseline). Used by training
(``harness.train``) and by ``run_all.py eval``.

* plain: deterministic FPS of each cloud to ``npoints`` (the official evaluation input), no
  augmentation, argmax of the logits;
* voting (Point-BERT / Point-MAE ``test_vote``): FPS to ``point_all`` once per batch, then
  ``votes`` passes of a random ``npoints`` subset shared by the batch +
  PointcloudScaleAndTranslate, logits summed.

Both return counts (correct, seen) as a float64 tensor of shape (2,) on ``device`` so that
distributed callers can all-reduce them before dividing.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import torch
from torch import nn


@torch.no_grad()
def accuracy_counts(net: nn.Module, loader, npoints: int, device: torch.device | str,
                    autocast: Callable[[], ContextManager] = nullcontext) -> torch.Tensor:
    """(correct, seen) over ``loader``'s (points (B, N, C), labels (B,)) batches, net in eval mode."""
    from harness.data.transforms import fps_points

    net.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for pts, labels in loader:
        pts = fps_points(pts.to(device), npoints)
        labels = labels.to(device)
        with autocast():
            logits = net(pts)
        counts += torch.tensor([(logits.argmax(1) == labels).sum().item(), labels.shape[0]],
                               dtype=torch.float64, device=device)
    return counts


@torch.no_grad()
def vote_counts(net: nn.Module, loader, npoints: int, point_all: int, votes: int, generator: torch.Generator,
                device: torch.device | str, autocast: Callable[[], ContextManager] = nullcontext) -> torch.Tensor:
    """(correct, seen) of one voting pass (``votes`` random subsets per batch, logits summed)."""
    from harness.data.transforms import fps_points, random_subset, scale_and_translate

    net.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for pts, labels in loader:
        base = fps_points(pts.to(device), point_all)
        labels = labels.to(device)
        total = None
        for _ in range(votes):
            x = scale_and_translate(random_subset(base, npoints, generator), generator=generator)
            with autocast():
                logits = net(x).float()
            total = logits if total is None else total + logits
        counts += torch.tensor([(total.argmax(1) == labels).sum().item(), labels.shape[0]],
                               dtype=torch.float64, device=device)
    return counts


def percent(counts: torch.Tensor) -> float:
    """100 * correct / seen (0 when nothing was seen)."""
    return 100.0 * counts[0].item() / max(counts[1].item(), 1)


def majority_baseline(labels: torch.Tensor, class_names: list[str]) -> dict:
    """Accuracy (%) of always answering the most frequent class of these labels."""
    counts = torch.bincount(labels.long().flatten(), minlength=len(class_names))
    top = int(counts.argmax())
    return {"acc": 100.0 * counts[top].item() / max(int(counts.sum()), 1), "class": class_names[top]}
