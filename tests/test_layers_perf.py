"""The speed / memory paths of models/layers.py give the numbers of the plain formulation.

* ``layers.linear`` (the blocks' and patch encoders' products through oneDNN on the CPU) gives
  ``F.linear``'s values and gradients, saving only what the needed gradients use;
* MiniPointNet runs its 1x1 Conv1d layers as channels-last linears with the global half of the
  second stage computed per group (and in chunks without autograd): same values as the
  official Conv1d formulation, same gradients;
* the ``recompute`` lever (activation recomputation of frozen sub-layers) changes no value or
  gradient, bit for bit, and keeps fewer activations for backward;
* importing the harness puts PyTorch's large CPU blocks on transparent huge pages (the allocator
  default ``THP_MEM_ALLOC_ENABLE=1``, which the environment can override).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from models import layers
from models.classifier import build_model
from models.errors import ConfigError
from models.layers import DropPath, Linear, MiniPointNet, set_recompute

TINY_MAE = {"num_group": 16, "group_size": 16, "trans_dim": 96, "depth": 2, "num_heads": 4, "encoder_dims": 96}
TINY_PEFT = {"prompt_layers": [0, 1], "cache_layers": [0, 1], "query_num_group": 8, "query_group_size": 16}


def conv_reference(net: MiniPointNet, groups: torch.Tensor) -> torch.Tensor:
    """The official Encoder's forward: Conv1d on (BG, C, K), concat [global; local], Conv1d."""
    b, g, k, c = groups.shape
    feat = net.first_conv(groups.reshape(b * g, k, c).transpose(1, 2))
    glob = feat.max(dim=2, keepdim=True).values
    feat = torch.cat([glob.expand(-1, -1, k), feat], dim=1)
    return net.second_conv(feat).max(dim=2).values.view(b, g, -1)


@pytest.mark.parametrize("train", [True, False])
def test_minipointnet_equals_the_conv1d_formulation(train):
    torch.manual_seed(0)
    net = MiniPointNet(3, 32, 64, 128, 48).train(train)
    groups = torch.randn(3, 5, 16, 3)
    got = net(groups)
    ref = conv_reference(net, groups)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    g1 = torch.autograd.grad(got.square().sum(), list(net.parameters()))
    g2 = torch.autograd.grad(ref.square().sum(), list(net.parameters()))
    # relative to the largest gradient: a bias before a train-mode BatchNorm has a ~0 gradient
    scale = max(b.abs().max().item() for b in g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-4)


def test_minipointnet_chunks_without_autograd_give_the_same_tokens(monkeypatch):
    torch.manual_seed(0)
    net = MiniPointNet(3, 32, 64, 128, 48).eval()
    groups = torch.randn(2, 7, 16, 3)
    with torch.no_grad():
        whole = net(groups)
        monkeypatch.setattr(MiniPointNet, "NO_GRAD_CHUNK", 3)  # 14 groups in chunks of 3
        chunked = net(groups)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(chunked, conv_reference(net, groups).detach(), atol=1e-5, rtol=1e-5)


def with_running_stats(net: MiniPointNet) -> MiniPointNet:
    """Non-trivial BatchNorm statistics and affine terms, so folding them is really exercised."""
    gen = torch.Generator().manual_seed(5)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=gen) - 0.5)
    return net.eval()


@pytest.mark.parametrize("dims", [(3, 32, 64, 128, 48), (16, 16, 16, 32, 32)])  # widening / M2AE level
def test_minipointnet_frozen_path_folds_batchnorm_and_equals_the_conv1d_formulation(dims):
    torch.manual_seed(0)
    net = with_running_stats(MiniPointNet(*dims))
    groups = torch.randn(2, 7, 16, dims[0])
    ref = conv_reference(net, groups).detach()
    with torch.no_grad():
        torch.testing.assert_close(net(groups), ref, atol=1e-5, rtol=1e-5)
    net.requires_grad_(False)  # frozen stem under autograd: the same fast path, no graph
    out = net(groups)
    assert out.grad_fn is None
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_minipointnet_eval_mode_with_trainable_weights_keeps_autograd():
    torch.manual_seed(0)
    net = with_running_stats(MiniPointNet(3, 32, 64, 128, 48))
    groups = torch.randn(2, 7, 16, 3)
    out = net(groups)
    assert out.grad_fn is not None
    ref = conv_reference(net, groups)
    g1 = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    g2 = torch.autograd.grad(ref.square().sum(), list(net.parameters()))
    scale = max(b.abs().max().item() for b in g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-4)


def test_blocks_linear_without_autograd_matches_nn_linear_and_keeps_hooks():
    torch.manual_seed(0)
    layer = Linear(384, 1536)
    x = torch.randn(4, 65, 384)
    with torch.no_grad():
        fast = layer(x)
        torch.testing.assert_close(fast, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer(x[0].t().contiguous().t()), fast[0], atol=1e-5, rtol=1e-5)  # strided rows
        wide = Linear(8, 4).double()  # other dtypes: the plain kernel
        xd = torch.randn(3, 8, dtype=torch.float64)
        assert torch.equal(wide(xd), F.linear(xd, wide.weight, wide.bias))
    with_grad = layer(x.requires_grad_())  # training: autograd intact (see the next test)
    assert with_grad.grad_fn is not None
    torch.testing.assert_close(with_grad, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
    layer.register_forward_hook(lambda m, args, out: out * 2)  # PEFT methods hook the blocks' linears
    with torch.no_grad():
        assert torch.equal(layer(x), 2 * fast)
    assert isinstance(layer, nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}


def _saved_tensors(fn):
    """The tensors autograd saves for backward while ``fn()`` runs, and its result."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn()
    return saved, out


@pytest.mark.parametrize("needs", ["input", "weight", "both", "bias only"])
def test_linear_training_path_gives_f_linear_values_and_gradients_and_saves_what_they_need(needs):
    torch.manual_seed(0)
    x = torch.randn(65, 4, 384).transpose(0, 1)  # (4, 65, 384), strided rows
    weight, bias = torch.randn(1536, 384) / 20, torch.randn(1536)
    x.requires_grad_(needs in ("input", "both"))
    weight.requires_grad_(needs in ("weight", "both"))
    bias.requires_grad_(True)
    grad_out = torch.randn(4, 65, 1536)
    results = []
    for fn in (lambda: layers.linear(x, weight, bias), lambda: F.linear(x, weight, bias)):
        saved, out = _saved_tensors(fn)
        grads = torch.autograd.grad(out, [t for t in (x, weight, bias) if t.requires_grad], grad_out)
        results.append((out.detach(), grads, saved))
    (out, grads, saved), (ref, ref_grads, _) = results
    if layers._onednn_linear_available():
        assert layers.linear(x, weight, bias).grad_fn.name() == "_InnerProductBackward"
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4 * r.abs().max().item(), rtol=1e-4)
    # a frozen weight keeps no input, a frozen input keeps no weight (as autograd does for F.linear)
    big = [t for t in saved if t.numel() == x.numel()]
    heavy = [t for t in saved if t.numel() == weight.numel()]
    assert (len(big) > 0) == (needs in ("weight", "both")), [tuple(t.shape) for t in saved]
    assert (len(heavy) > 0) == (needs in ("input", "both")), [tuple(t.shape) for t in saved]


def test_linear_output_may_change_in_place_and_the_plain_kernel_takes_over_when_onednn_is_off(monkeypatch):
    torch.manual_seed(0)
    x, weight = torch.randn(3, 7, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    shift = torch.randn(3, 1, 8)
    out = layers.linear(x, weight).add_(shift)  # MiniPointNet adds the per-group half in place
    out.square().sum().backward()
    ref_x, ref_w = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    F.linear(ref_x, ref_w).add_(shift).square().sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(weight.grad, ref_w.grad, atol=1e-4, rtol=1e-4)
    if layers._onednn_linear_available():  # the fast path was taken, and leaves no view to copy back
        assert out.grad_fn.name() == "AddBackward0"
        assert layers.linear(x, weight).grad_fn.name() == "_InnerProductBackward"
    monkeypatch.setattr(layers, "_ONEDNN_LINEAR", False)
    assert torch.equal(layers.linear(x, weight), F.linear(x, weight))
    assert layers.linear(x, weight).grad_fn.name() != "_InnerProductBackward"


def test_linear_gives_f_linears_answer_for_what_onednn_does_not_take_and_stays_on():
    torch.manual_seed(0)
    x, weight = torch.randn(5, 16), torch.randn(8, 16)
    for bias in (torch.randn(16)[::2], torch.tensor(0.5), torch.randn(1), torch.randn(1, 8)):
        torch.testing.assert_close(layers.linear(x, weight, bias), F.linear(x, weight, bias))
    torch.testing.assert_close(layers.linear(x.double(), weight.double()), F.linear(x.double(), weight.double()))
    for bad in (torch.randn(8, 15), torch.randn(0, 15)):  # F.linear's own error for a shape mismatch
        with pytest.raises(RuntimeError):
            layers.linear(x, bad)
    if layers._onednn_linear_available():  # none of those turned the fast path off for later calls
        assert layers._ONEDNN_LINEAR is True
        assert layers.linear(x.requires_grad_(), weight).grad_fn.name() == "_InnerProductBackward"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_drop_path_is_timms_formula_bit_for_bit(dtype):
    x = torch.randn(64, 5, 8, dtype=dtype, requires_grad=True)
    torch.manual_seed(0)
    got = DropPath(0.3).train()(x)
    torch.manual_seed(0)  # the same draw as timm's: bernoulli_(keep) on a (B, 1, 1) tensor
    mask = x.new_empty(64, 1, 1).bernoulli_(0.7)
    ref = x.div(0.7) * mask
    assert 0 < int((mask == 0).sum()) < 64
    assert torch.equal(got, ref)
    assert torch.equal(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0])


def saved_bytes(model, pts) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct non-parameter storages autograd saves for backward in ``model(pts)``."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved, out = _saved_tensors(lambda: model(pts))
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
    return sum(n for ptr, n in seen.items() if ptr not in params), out


@pytest.mark.filterwarnings("ignore:Point-PEFT ran without a memory bank")
def test_recompute_frozen_keeps_values_and_gradients_and_saves_less():
    pts = torch.rand(2, 256, 3) * 2 - 1
    results = {}
    for mode in ("off", "frozen"):
        torch.manual_seed(0)
        model = build_model("point_mae", 15, method="point_peft", method_options=TINY_PEFT, recompute=mode, **TINY_MAE)
        model.train()
        torch.manual_seed(1)  # same dropout / drop-path draws in both runs
        nbytes, out = saved_bytes(model, pts)
        out.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[mode] = (nbytes, out.detach(), grads)
    (b_off, o_off, g_off), (b_rec, o_rec, g_rec) = results["off"], results["frozen"]
    assert torch.equal(o_off, o_rec)
    assert g_off.keys() == g_rec.keys() and g_off
    for name in g_off:
        assert torch.equal(g_off[name], g_rec[name]), name
    assert b_rec < 0.8 * b_off  # the frozen MLPs' GELU inputs and attention q/k/v/out are not kept


def test_recompute_frozen_leaves_full_fine_tuning_alone_and_bad_modes_are_config_errors():
    model = build_model("point_mae", 15, recompute="frozen", **TINY_MAE)
    assert not any(m._recomputes() for m in model.modules() if hasattr(m, "_recomputes"))  # weights train
    set_recompute(model, "all")
    assert all(m._recomputes() for m in model.modules() if hasattr(m, "_recomputes"))
    with pytest.raises(ConfigError, match="recompute 'sometimes' is not one of"):
        build_model("point_bert", 15, recompute="sometimes")


@pytest.mark.filterwarnings("ignore:Point-PEFT ran without a memory bank")
@pytest.mark.parametrize("backbone,extra", [("point_mae", TINY_MAE),
                                            ("point_m2ae", {"num_groups": (64, 32, 16), "group_sizes": (16, 8, 8),
                                                            "encoder_dims": (48, 96, 96), "depths": (1, 2, 1)})])
def test_every_memory_lever_keeps_values_and_gradients(backbone, extra):
    """Backbone recompute x geometric-branch recompute: all four builds give the same logits and
    gradients, bit for bit; each lever keeps fewer bytes for backward."""
    pts = torch.rand(2, 256, 3) * 2 - 1
    results = {}
    for recompute in ("off", "frozen"):
        for geo in (False, True):
            torch.manual_seed(0)
            options = {"geo_recompute": geo, **(TINY_PEFT if backbone == "point_mae" else {})}
            model = build_model(backbone, 15, method="point_peft", method_options=options, recompute=recompute,
                                **extra)
            model.train()
            torch.manual_seed(1)
            nbytes, out = saved_bytes(model, pts)
            out.square().sum().backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results[recompute, geo] = (nbytes, out.detach(), grads)
    ref_bytes, ref_out, ref_grads = results["off", False]
    assert ref_grads
    for key, (nbytes, out, grads) in results.items():
        assert torch.equal(out, ref_out), key
        assert grads.keys() == ref_grads.keys(), key
        for name in grads:
            assert torch.equal(grads[name], ref_grads[name]), (key, name)
    assert results["off", True][0] < results["off", False][0]
    assert results["frozen", False][0] < results["off", False][0]
    assert results["frozen", True][0] < min(results["frozen", False][0], results["off", True][0])


def test_group_max_keeps_a_uint8_argmax_and_the_same_gradient():
    from models.peft.point_peft.geometric_adapter import max_over_members

    torch.manual_seed(0)
    y = torch.randn(5, 16, 7)
    y[0, 3] = y[0, 9]  # ties: the gradient goes where y.max(dim=1) puts it
    y[1, :, 2] = 1.0
    a = y.clone().requires_grad_()
    b = y.clone().requires_grad_()
    grad = torch.randn(5, 7)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        va = max_over_members(a)
    vb = b.max(dim=1).values
    assert saved == [torch.uint8]
    assert torch.equal(va, vb)
    va.backward(grad)
    vb.backward(grad)
    assert torch.equal(a.grad, b.grad)
    with torch.no_grad():  # no autograd: values only (amax), the same values, NaN included
        assert torch.equal(max_over_members(y), y.max(dim=1).values)
        y[2, 5, 4] = float("nan")
        torch.testing.assert_close(max_over_members(y), y.max(dim=1).values, rtol=0, atol=0, equal_nan=True)
        assert torch.isnan(max_over_members(y)[2, 4])


def test_point_peft_runs_under_bf16_autocast_train_and_eval():
    """The geometric branch's in-place addmm_ is skipped under autocast (autocast casts addmm's
    inputs, not addmm_'s: mixing bf16 and float32 there raised a dtype error)."""
    from models.classifier import build_model

    torch.manual_seed(0)
    model = build_model("point_mae", 15, method="point_peft", family="scan")
    model.set_memory_bank(torch.nn.functional.normalize(torch.randn(int(model.query_dim), 64), dim=0))
    pts = torch.rand(2, 2048, 3) * 2 - 1
    model.eval()
    with torch.no_grad():
        reference = model(pts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(pts)
    assert logits.shape == (2, 15) and logits.dtype == torch.bfloat16
    assert torch.allclose(logits.float(), reference, atol=0.15, rtol=0.05)   # bf16 rounding only
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(pts).float(), torch.tensor([0, 1]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def _huge_pages_in_fresh_process(prelude: str, env_value: str | None) -> tuple[str, int]:
    """(THP_MEM_ALLOC_ENABLE as the process ends up with it, KiB of a written 16 MiB CPU tensor on
    transparent huge pages, from /proc/self/smaps) in a fresh interpreter that runs ``prelude``
    first; ``env_value`` None = variable unset."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    code = prelude + """
import os, harness, torch
x = torch.empty(1 << 22).fill_(1)
huge, here = 0, False
for line in open("/proc/self/smaps"):
    head = line.split()[0]
    if not head.endswith(":"):
        lo, hi = (int(v, 16) for v in head.split("-"))
        here = lo <= x.data_ptr() < hi
    elif here and head == "AnonHugePages:":
        huge = int(line.split()[1])
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), huge)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    value, huge = out.stdout.split()
    return value, int(huge)


def _huge_pages_on_request() -> bool:
    """The kernel gives transparent huge pages where a program asks (madvise), not everywhere or never."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[madvise]" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _huge_pages_on_request(), reason="transparent huge pages are not 'madvise' here")
def test_importing_the_harness_puts_large_cpu_tensors_on_huge_pages_unless_told_not_to():
    value, huge = _huge_pages_in_fresh_process("", None)
    assert value == "1" and huge >= 8 << 10      # most of the 16 MiB
    assert _huge_pages_in_fresh_process("", "0") == ("0", 0)   # the user's choice is kept
    # PyTorch reads the variable at its first CPU allocation: a process that allocated before
    # importing the harness keeps 4 KiB pages
    assert _huge_pages_in_fresh_process("import torch; torch.ones(1)", None) == ("1", 0)
