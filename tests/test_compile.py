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

from harness.train import compile_model
from models import layers
from small_models import ALL_CASES, small_case, train_step

pytestmark = pytest.mark.usefixtures("one_thread", "recursion_limit_kept")


@pytest.fixture
def recursion_limit_kept():
    """Inductor raises the interpreter's recursion limit to 2,000 for good; later tests in the
    same worker (msgspec's depth limit follows it) see the default again."""
    limit = sys.getrecursionlimit()
    yield
    sys.setrecursionlimit(limit)

has_compiler = any(shutil.which(c) for c in ("g++", "c++", "clang++"))


CASES = [("point_mae", "point_peft"),    # the method the GPU epoch bench compiles
         ("point_mae", "gaprompt"),      # failed in inductor under torch's automatic dynamic shapes
         ("point_m2ae", "linear_probe")] # frozen levels: a checkpoint in a graph compiled for inference
if os.environ.get("COMPILE_ALL"):        # every registered method on every backbone it supports
    CASES = ALL_CASES


@pytest.mark.slow
@pytest.mark.skipif(not has_compiler, reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("backbone, method", CASES)
def test_compiled_model_trains_and_evaluates_like_eager(backbone, method):
    """Training: the compiled loss and gradients are as close to float64's as a small multiple
    of eager float32's own distance, or 1e-5 of their size (some small random models are
    ill-conditioned: eager's gradients already differ from float64's by ~1e-2 there; fused
    float32 reductions move faithful IDPT's loss by 2e-6 of itself). Eval: the eager logits.
    Under COMPILE_ALL the cases share one process's compiled frames, as models compiled one
    after another in a session do (a frame compiled for a model without SSF's hooks once ran
    an SSF model without them: loss off by 1.4e-3 of itself)."""
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
    assert (closs.double() - loss64).abs() <= 10 * (loss.double() - loss64).abs() + 1e-5 * loss64.abs()
    assert (cgrads.double() - grads64).norm() <= 10 * (grads.double() - grads64).norm() + 1e-5 * grads64.norm()
    assert torch.allclose(clogits, logits, atol=1e-5, rtol=1e-5)
    assert torch.allclose(clast, last, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not has_compiler, reason="inductor's CPU backend needs a C++ compiler")
def test_a_model_with_forward_hooks_compiled_after_one_without_runs_its_hooks():
    """SSF and DAPT put their scale-and-shift in forward hooks. torch skips hook guards by
    default, so a frame compiled for a model without hooks ran a later model of the same class
    and shapes without them (here: a model of one layer); compile_model guards on hooks."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x).relu()

    x = torch.randn(2, 4)
    compile_model(Net())(x)
    hooked = Net()
    hooked.fc.register_forward_hook(lambda module, args, out: out * 2 + 1)
    assert not torch.allclose(hooked(x), hooked.fc.forward(x).relu())   # the hook matters
    assert torch.allclose(compile_model(hooked)(x), hooked(x))


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
