"""Small models of every registered method on every backbone it supports, for tests that sweep
the registry (compile, dtypes): the backbones' widths, few patches, few blocks, no stochastic
depth, dropout off, a random memory bank where the method has one."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.classifier import build_model
from models.peft import registry

SMALL = {"point_mae": dict(num_group=16, group_size=8, depth=4, drop_path_rate=0.0),
         "point_bert": dict(num_group=16, group_size=8, depth=4, drop_path_rate=0.0),
         "point_m2ae": dict(num_groups=(64, 32, 16), group_sizes=(16, 8, 8), depths=(1, 1, 1),
                            drop_path_rate=0.0)}
# Method options that fit 16 patches and 4 blocks (a "_faithful" variant takes its method's).
FOUR_BLOCKS = {"prompt_layers": [0, 1, 2], "cache_layers": [0, 1, 2]}
METHOD_OPTIONS = {("point_peft", "point_mae"): {"query_num_group": 8, "query_group_size": 8, **FOUR_BLOCKS},
                  ("point_peft", "point_bert"): FOUR_BLOCKS,
                  "gaprompt": {"prompt_depth": 2}, "idpt": {"prompt_layer": 3, "k": 8},
                  "pointgst": {"local": 16}, "pointlora": {"select": [8, 4]}}

# (backbone, method) for every registered method on every backbone it supports.
ALL_CASES = [(b, name) for name, m in registry.methods().items() for b in m.backbones]


def method_options(method: str, backbone: str) -> dict | None:
    base = method.removesuffix("_faithful")
    return METHOD_OPTIONS.get((base, backbone), METHOD_OPTIONS.get(base))


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def small_case(backbone: str, method: str):
    """(model, points (4, 256, 3) in [-1, 1), labels (4,)) for 15 classes, seeded."""
    torch.manual_seed(0)
    model = no_dropout(build_model(backbone, 15, method=method, method_options=method_options(method, backbone),
                                   **SMALL[backbone]))
    if hasattr(model, "set_memory_bank"):
        model.set_memory_bank(F.normalize(torch.randn(model.query_dim, 40), dim=0))
    gen = torch.Generator().manual_seed(1)
    return model, torch.rand(4, 256, 3, generator=gen) * 2 - 1, torch.arange(4)


def train_step(model, fwd, pts, labels):
    """Loss and the trainable parameters' gradients (zeros where backward left none)."""
    model.train()
    for p in model.parameters():
        p.grad = None
    loss = F.cross_entropy(fwd(pts), labels)
    loss.backward()
    return loss.detach(), torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                     for p in model.parameters() if p.requires_grad])
