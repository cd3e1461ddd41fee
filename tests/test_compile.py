"""``train.compile`` / ``bench --compile on``: a model compiled by ``harness.train.compile_model``
(inductor on the CPU here) trains and evaluates to the eager model's values, including the cases
that once failed to compile; and the recompute lever stays out of frozen stretches.

Needs a C++ compiler (inductor's CPU backend); each case compiles a small model (~10-60 s). Three
cases run by default; ``COMPILE_ALL=1 python -m pytest tests/test_compile.py`` runs every
registered method on every backbone it supports.
"""
from __future__ import annotations

import copy
import os
import shutil
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from harness.train import compile_model
from models import layers
from models.classifier import build_model
from models.peft import registry

pytestmark = pytest.mark.usefixtures("one_thread", "recursion_limit_kept")


@pytest.fixture
def recursion_limit_kept():
    """Inductor raises the interpreter's recursion limit to 2,000 for good; later tests in the
    same worker (msgspec's depth limit follows it) see the default again."""
    limit = sys.getrecursionlimit()
    yield
    sys.setrecursionlimit(limit)

has_compiler = any(shutil.which(c) for c in ("g++", "c++", "clang++"))

# Small versions (the backbones' widths; few patches, few blocks, no stochastic depth).
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


def method_options(method, backbone):
    base = method.removesuffix("_faithful")
    return METHOD_OPTIONS.get((base, backbone), METHOD_OPTIONS.get(base))


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def train_step(model, fwd, pts, labels):
    """Loss and the trainable parameters' gradients (zeros where backward left none)."""
    model.train()
    for p in model.parameters():
        p.grad = None
    loss = F.cross_entropy(fwd(pts), labels)
    loss.backward()
    return loss.detach(), torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                     for p in model.parameters() if p.requires_grad])


def small_case(backbone, method):
    torch.manual_seed(0)
    model = no_dropout(build_model(backbone, 15, method=method, method_options=method_options(method, backbone),
                                   **SMALL[backbone]))
    if hasattr(model, "set_memory_bank"):
        model.set_memory_bank(F.normalize(torch.randn(model.query_dim, 40), dim=0))
    gen = torch.Generator().manual_seed(1)
    return model, torch.rand(4, 256, 3, generator=gen) * 2 - 1, torch.arange(4)


CASES = [("point_mae", "point_peft"),    # the method the GPU epoch bench compiles
         ("point_mae", "gaprompt"),      # failed in inductor under torch's automatic dynamic shapes
         ("point_m2ae", "linear_probe")] # frozen levels: a checkpoint in a graph compiled for inference
if os.environ.get("COMPILE_ALL"):        # every registered method on every backbone it supports
    CASES = [(b, name) for name, m in registry.methods().items() for b in m.backbones]


@pytest.mark.slow
@pytest.mark.skipif(not has_compiler, reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("backbone, method", CASES)
def test_compiled_model_trains_and_evaluates_like_eager(backbone, method):
    """Training: the compiled loss and gradients are as close to float64's as a small multiple
    of eager float32's own distance (some small random models are ill-conditioned: eager's
    gradients already differ from float64's by ~1e-2 there). Eval: the eager logits."""
    model, pts, labels = small_case(backbone, method)
    exact = copy.deepcopy(model).double()
    loss64, grads64 = train_step(exact, exact, pts.double(), labels)
    loss, grads = train_step(model, model, pts, labels)
    compiled = compile_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's graph-break notes (FPS and kNN run eagerly)
        closs, cgrads = train_step(model, compiled, pts, labels)
        model.eval()
        with torch.no_grad():
            logits, clogits = model(pts), compiled(pts)
            last, clast = model(pts[:3]), compiled(pts[:3])  # a smaller last batch: a new shape
    assert torch.isfinite(grads).all() and grads64.norm() > 0
    assert (closs.double() - loss64).abs() <= 10 * (loss.double() - loss64).abs() + 1e-6 * loss64.abs()
    assert (cgrads.double() - grads64).norm() <= 10 * (grads.double() - grads64).norm() + 1e-5 * grads64.norm()
    assert torch.allclose(clogits, logits, atol=1e-5, rtol=1e-5)
    assert torch.allclose(clast, last, atol=1e-5, rtol=1e-5)


def test_recompute_skips_a_stretch_that_backward_never_reaches(monkeypatch):
    calls = []
    real = layers.checkpoint
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    block = layers.Block(32, 4).requires_grad_(False)     # frozen: recompute "frozen" applies
    x = torch.randn(2, 5, 32)
    out = block(x)                                         # nothing requires grad: no checkpoint
    assert calls == [] and not out.requires_grad
    xg = x.clone().requires_grad_()
    outg = block(xg)                                       # the input trains upstream: recomputed
    assert len(calls) == 2 and torch.equal(outg, out)
    outg.sum().backward()
    calls.clear()
    block.norm2.weight.requires_grad_()                    # a tuned pre-norm (BitFit, SSF) needs backward
    block(x)
    assert len(calls) == 1                                 # the MLP's region, not the attention's
