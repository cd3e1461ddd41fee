"""Parameter accounting: total, trainable (marked), receiving a gradient, and by module group.

"Trainable" counts tensors with ``requires_grad``; "with grad" counts those that actually get a
gradient in a forward/backward pass. The two differ when a method flags tensors it never uses
(the official Point-PEFT does: docs/point-peft.md, parameter counts), and the paper's figures count the latter.
"""
from __future__ import annotations

import csv
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
PAPER_CSV = REPO / "results" / "reference" / "paper.csv"


@dataclass(frozen=True)
class ParamCount:
    total: int
    trainable: int
    with_grad: int | None = None


def module_group(name: str) -> str:
    """Group of a parameter name: its top-level module, e.g. ``blocks.blocks.3.attn.qkv.weight`` -> ``blocks``."""
    return name.split(".", 1)[0]


def count_params(model: nn.Module) -> ParamCount:
    params = list(model.parameters())
    return ParamCount(total=sum(p.numel() for p in params),
                      trainable=sum(p.numel() for p in params if p.requires_grad))


def count_by_group(model: nn.Module) -> "OrderedDict[str, ParamCount]":
    """Total and trainable per group, in module order; a model may define ``param_group(name)``."""
    group_of = getattr(model, "param_group", module_group)
    totals: OrderedDict[str, list[int]] = OrderedDict()
    for name, p in model.named_parameters():
        entry = totals.setdefault(group_of(name), [0, 0])
        entry[0] += p.numel()
        entry[1] += p.numel() if p.requires_grad else 0
    return OrderedDict((g, ParamCount(t, tr)) for g, (t, tr) in totals.items())


def count_with_grad(model: nn.Module, npoints: int, batch: int = 2, seed: int = 0) -> int:
    """Elements of trainable tensors that receive a gradient in one train-mode forward/backward.

    Runs on random points in [-1, 1]^3 and restores the model's parameters, buffers, grads
    and mode afterwards, so it can be called on a model about to be trained.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    gen = torch.Generator().manual_seed(seed)
    pts = torch.rand(batch, npoints, 3, generator=gen) * 2 - 1
    device = next(model.parameters()).device
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a PEFT model without its memory bank: counting only
        torch.manual_seed(seed)
        model(pts.to(device)).float().sum().backward()
    used = sum(p.numel() for p in model.parameters() if p.requires_grad and p.grad is not None)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    model.train(was_training)
    return used


def paper_trainable_millions(path: Path = PAPER_CSV) -> dict[tuple[str, str, str], float]:
    """(backbone, method, dataset) -> the paper's trainable parameters in millions (plain recipe)."""
    out: dict[tuple[str, str, str], float] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["variant"] == "" and row["trainable_params_M"]:
                out.setdefault((row["backbone"], row["method"], row["dataset"]),
                               float(row["trainable_params_M"]))
    return out
