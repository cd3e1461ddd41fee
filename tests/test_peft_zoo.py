"""The PEFT zoo: counts, official state-dict layouts, what trains, adapter files, merge, learning.

Counts are the official ones (IDPT, DAPT, VPT-deep from their repositories' runners; linear
probe from IDPT's ``only_new`` filter) or those the docs derive for the inferred baselines
(Adapter r=64, SSF at DAPT's positions, LoRA r=8 on qkv+proj, BitFit), for Point-MAE with 15
and 40 classes. Reference lists: ``tests/reference/peft_zoo/`` (official models instantiated on
CPU, 15 classes, PB_T50_RS config).
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REFERENCE
from models.classifier import build_model
from models.errors import ConfigError
from models.peft import registry
from models.peft.adapter_io import load_adapter, save_adapter
from models.peft.lora import LoRALinear, lora_linear

pytestmark = pytest.mark.usefixtures("one_thread")

ZOO = REFERENCE / "peft_zoo"

# method, options, classes, family, total, trainable (Point-MAE)
COUNTS = [
    ("full", {}, 15, "scan", 22_093_327, 22_093_327),
    ("full", {}, 40, "modelnet", 22_099_752, 22_099_752),
    ("linear_probe", {}, 15, "scan", 22_093_327, 268_303),
    ("linear_probe", {}, 40, "modelnet", 22_099_752, 274_728),
    ("vpt_deep", {}, 15, "scan", 22_185_487, 360_463),
    ("vpt_deep", {}, 40, "modelnet", 22_191_912, 366_888),
    ("ssf", {}, 15, "scan", 22_196_239, 371_215),
    ("ssf", {}, 40, "modelnet", 22_202_664, 377_640),
    ("adapter", {}, 15, "scan", 22_688_527, 863_503),
    ("adapter", {}, 40, "modelnet", 22_694_952, 869_928),
    # LoRA r=8 on qkv (8*(384+1152)) and proj (8*768) in 12 blocks + the linear-probe set
    ("lora", {}, 15, "scan", 22_093_327 + 221_184, 268_303 + 221_184),
    ("lora", {}, 40, "modelnet", 22_099_752 + 221_184, 274_728 + 221_184),
    # BitFit: every bias (39,680 on Point-MAE) + cls token / pos + head (biases counted once)
    ("bitfit", {}, 15, "scan", 22_093_327, 307_983),
    ("bitfit", {}, 40, "modelnet", 22_099_752, 314_408),
    ("bitfit", {"biases": "blocks"}, 15, "scan", 22_093_327, 268_303 + 12 * 3_072),
    ("idpt_faithful", {}, 15, "scan", 23_522_191, 1_696_783),
    ("idpt_faithful", {"head_input": "prompt_only"}, 15, "scan", 23_325_583, 1_500_175),
    ("idpt_faithful", {}, 40, "modelnet", 23_528_616, 1_703_208),
    ("idpt", {}, 15, "scan", 23_522_191, 1_696_783 + 384),  # the default also trains prompt_pos
    ("dapt_faithful", {}, 15, "scan", 22_912_795, 1_087_771),
    ("dapt", {}, 15, "scan", 22_912_795, 1_087_771),
    ("dapt_faithful", {"head_tokens": ["cls", "prompt_mean"]}, 15, "scan", 22_814_491, 989_467),
    ("dapt_faithful", {"rank": 72, "head_tokens": ["cls", "patch_max"]}, 40, "modelnet", 22_894_740, 1_069_716),
]


def counts(model) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


@pytest.mark.parametrize("method,options,classes,family,total,trainable", COUNTS,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(COUNTS)])
def test_counts_point_mae(method, options, classes, family, total, trainable):
    model = build_model("point_mae", classes, method=method, family=family, method_options=options)
    assert counts(model) == (total, trainable)


def reference(name: str) -> dict[str, tuple[int, ...]]:
    path = ZOO / f"{name}_state_dict.txt"
    if not path.is_file():
        pytest.skip(f"reference list {path.name} is absent")
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split(" ", 1)
        out[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return out


OFFICIAL = [("vpt_deep", "vpt_deep"), ("idpt", "idpt_faithful"), ("dapt", "dapt_faithful")]


def shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("ref,method", OFFICIAL)
def test_state_dict_equals_official_list(ref, method):
    assert shapes(build_model("point_mae", 15, method=method)) == reference(ref)


def test_idpt_default_drops_only_the_bn_aliases():
    official = reference("idpt")
    aliases = {k for k in official if re.match(r"blocks\.cls\.bn\d\.", k)}
    assert len(aliases) == 20
    assert shapes(build_model("point_mae", 15, method="idpt")) == {
        k: v for k, v in official.items() if k not in aliases}


@pytest.mark.parametrize("ref,method", OFFICIAL)
def test_file_in_official_layout_loads_strictly(ref, method, tmp_path):
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in reference(ref).items():
        state[key] = (torch.randint(0, 100, shape, generator=gen) if key.endswith("num_batches_tracked")
                      else torch.randn(shape, generator=gen))
    for key in list(state):  # IDPT: the two keys of one BatchNorm hold the same tensor
        m = re.match(r"blocks\.cls\.bn(\d)\.(.*)", key)
        if m:
            state[key] = state[f"blocks.cls.conv{m[1]}.1.{m[2]}"]
    path = tmp_path / "official.pth"
    torch.save({"base_model": state}, path)
    model = build_model("point_mae", 15, method=method)
    model.load_state_dict(torch.load(path, weights_only=True)["base_model"], strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key].to(value.dtype)), key


# ---------------------------------------------------------------------------- training behaviour

SMALL = dict(num_group=32, group_size=8, drop_path_rate=0.1)
ZOO_METHODS = [m for m in registry.methods() if not m.startswith("point_peft")]  # own tests


def batch(seed: int = 0, n: int = 4, points: int = 256):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, points, 3, generator=gen) * 2 - 1, torch.arange(n) % 15


def steps(model, n: int = 2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.05)
    pts, labels = batch()
    model.train()
    for _ in range(n):
        opt.zero_grad()
        F.cross_entropy(model(pts), labels).backward()
        opt.step()


# gaprompt_faithful registers tensors its forward never reads, as the official model does;
# pointlora_faithful's mask predictor learns from its auxiliary loss only, which this step leaves
# out (tests/test_zoo_methods.py checks both)
@pytest.mark.parametrize("method", [m for m in ZOO_METHODS if m not in ("gaprompt_faithful", "pointlora_faithful")])
def test_adamw_moves_tuned_tensors_only(method):
    """One AdamW step. The tuned tensors are first nudged off their init: zero-initialised
    up-projections (Adapter, LoRA, DAPT) give the tensors before them an exactly zero gradient
    on a first step, which says nothing about whether they are wired into the forward."""
    torch.manual_seed(0)
    model = build_model("point_mae", 15, method=method, **SMALL)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dtype.is_floating_point:
                p.add_(torch.randn_like(p) * 0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps(model, 1)
    frozen_moved = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, before[n])]
    tuned_still = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert frozen_moved == [] and tuned_still == []


def test_idpt_faithful_clip_norm_sees_the_frozen_gradients():
    pts, labels = batch()
    for method, expect in (("idpt_faithful", True), ("idpt", False)):
        torch.manual_seed(0)
        model = build_model("point_mae", 15, method=method, **SMALL)
        F.cross_entropy(model(pts), labels).backward()
        frozen = [p for p in model.parameters() if not p.requires_grad]
        assert all((p.grad is not None) == expect for p in frozen), method
    torch.manual_seed(0)
    model = build_model("point_mae", 15, method="idpt_faithful", **SMALL)
    torch.manual_seed(1)
    F.cross_entropy(model(pts), labels).backward()
    first = model.encoder.first_conv[0].weight.grad.clone()
    torch.manual_seed(1)  # same drop-path draws
    F.cross_entropy(model(pts), labels).backward()  # cleared at each forward, never accumulated
    assert torch.allclose(model.encoder.first_conv[0].weight.grad, first, atol=1e-6)


@pytest.mark.parametrize("method", ZOO_METHODS)
def test_adapter_file_round_trip(method, tmp_path):
    torch.manual_seed(0)
    model = build_model("point_mae", 15, method=method, **SMALL)
    steps(model)
    path = save_adapter(model, tmp_path / "adapter.pt", method)
    torch.manual_seed(0)
    fresh = build_model("point_mae", 15, method=method, **SMALL)
    pts, _ = batch(1)
    model.eval(), fresh.eval()
    load_adapter(fresh, path, method)
    with torch.no_grad():
        assert torch.equal(model(pts), fresh(pts))


def test_lora_merge_keeps_logits_and_removes_overhead():
    torch.manual_seed(0)
    model = build_model("point_mae", 15, method="lora", method_options={"rank": 4}, **SMALL)
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            torch.nn.init.normal_(p, std=0.1)  # a trained-looking update
    pts, _ = batch(2)
    model.eval()
    with torch.no_grad():
        before = model(pts)
        model.merge()
        after = model(pts)
    assert torch.allclose(before, after, atol=1e-5) and not torch.equal(before, build_model(
        "point_mae", 15, **SMALL).eval()(pts))
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    plain = build_model("point_mae", 15, **SMALL)
    assert sorted(model.state_dict()) == sorted(plain.state_dict())


def test_lora_keeps_the_blocks_product_path_before_and_after_merge(monkeypatch):
    from models import layers
    model = build_model("point_mae", 15, method="lora", method_options={"rank": 4}, **SMALL)
    calls = []
    fast = layers.linear
    monkeypatch.setattr(layers, "linear", lambda x, w, b=None: calls.append(w.shape) or fast(x, w, b))
    qkv = model.blocks.blocks[0].attn.qkv
    x = torch.randn(2, 5, qkv.in_features, requires_grad=True)
    out = qkv(x)  # the frozen W x + b goes through layers.linear (oneDNN on the CPU), LoRA adds BA x
    ref = F.linear(x, qkv.weight, qkv.bias) + x @ qkv.lora_A.t() @ qkv.lora_B.t() * qkv.scaling
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert calls == [qkv.weight.shape]
    model.merge()
    assert type(qkv) is layers.Linear and set(qkv.state_dict()) == {"weight"}  # no qkv bias
    qkv(x)
    assert len(calls) == 2
    with pytest.raises(ConfigError, match="plain linear layer"):
        lora_linear(model.cls_head_finetune, 4, 4.0, 0.0)


@pytest.mark.parametrize("backbone", ["point_bert", "point_m2ae"])
def test_baselines_run_on_every_backbone(backbone):
    methods = [m for m in ZOO_METHODS if registry.get(m).supports(backbone)]
    assert {"linear_probe", "bitfit", "vpt_deep", "adapter", "lora", "ssf"} <= set(methods)
    options = {"point_bert": {"num_group": 32, "group_size": 8},
               "point_m2ae": {"num_groups": (64, 32, 16), "group_sizes": (8, 8, 8)}}[backbone]
    pts, labels = batch(points=512)
    for method in methods:
        torch.manual_seed(0)
        model = build_model(backbone, 15, method=method, **options)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        steps(model)
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if not p.requires_grad), method
        assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad), method


def test_unsupported_backbone_is_one_line_error():
    with pytest.raises(ConfigError, match="method 'idpt' has no recipe for backbone 'point_m2ae'"):
        build_model("point_m2ae", 15, method="idpt")
    with pytest.raises(ConfigError, match="dapt option head_tokens"):
        build_model("point_mae", 15, method="dapt", method_options={"head_tokens": ["cls", "mean"]})
    with pytest.raises(ConfigError, match="method idpt_faithful has mode faithful"):
        build_model("point_mae", 15, method="idpt_faithful", method_options={"mode": "default"})


# ---------------------------------------------------------------------------- learning

NARROW = dict(trans_dim=96, encoder_dims=96, num_heads=4, depth=4, num_group=16, group_size=8,
              drop_path_rate=0.0)
NARROW_OPTIONS = {"idpt": {"prompt_layer": 3, "k": 8}, "idpt_faithful": {"prompt_layer": 3, "k": 8},
                  # 16 patches: PointGST's local graphs of 16, PointLoRA's 8 + 4 selected tokens
                  "pointgst": {"local": 16}, "pointgst_faithful": {"local": 16},
                  "pointlora": {"select": [8, 4]}, "pointlora_faithful": {"select": [8, 4]}}


@pytest.fixture(scope="module")
def shapes_set():
    from harness.data.synthetic import sample_instance
    rng = np.random.default_rng(0)

    def split(per_class):
        xs, ys = [], []
        for label in range(5):
            for _ in range(per_class):
                xs.append(sample_instance(label, 128, rng)[0])
                ys.append(label)
        return torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    return split(12), split(8)


def fit(model, x, y, epochs: int, lr: float = 2e-3) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(15):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


@pytest.fixture(scope="module")
def pretrained(shapes_set):
    """A narrow backbone fine-tuned in full on the shapes, its BatchNorm statistics then settled
    (cumulative averages over the train set): the stand-in for a pre-trained checkpoint. A PEFT
    method on a random frozen backbone says little (its frozen BN statistics are the init's)."""
    (x, y), _ = shapes_set
    torch.manual_seed(0)
    model = build_model("point_mae", 5, **NARROW)
    fit(model, x, y, epochs=6)
    settle_batchnorms(model, x)
    return {k: v for k, v in model.state_dict().items() if not k.startswith("cls_head_finetune")}


def settle_batchnorms(model, x) -> None:
    """Re-estimate the statistics of the BatchNorms in train mode (the tuned ones; all of them in
    faithful modes) as cumulative averages over ``x`` ("precise BN"). After 24 steps at momentum
    0.1 their running averages still lag features that the method moved quickly (PPT, GAPrompt:
    0.28-0.38 in eval mode, 0.75 with batch statistics); a full schedule does not have this lag."""
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        for idx in torch.arange(len(x)).split(15):
            model(x[idx])


# pointlora_faithful keeps the official encoder BatchNorm in train mode: its running statistics
# blend the 8-point patch groups and the 64-point scale-2 groups, so the eval logits collapse
# to one class (0.20 here; docs/methods/pointlora.md, option encoder_batch_stats)
BLENDED_ENCODER_BN = {"pointlora_faithful"}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.xfail(
    reason="official encoder BatchNorm statistics blend two groupings (see BLENDED_ENCODER_BN)", strict=True))
    if m in BLENDED_ENCODER_BN else m for m in ZOO_METHODS if m != "full"])  # full: test_train.py
def test_learns_on_synthetic_shapes(method, shapes_set, pretrained):
    """Each method, on the pre-trained stand-in with a fresh head, learns the 5 shape classes."""
    (x, y), (xt, yt) = shapes_set
    torch.manual_seed(0)
    backbone = build_model("point_mae", 5, **NARROW)
    missing = backbone.load_state_dict(pretrained, strict=False).missing_keys
    assert all(k.startswith("cls_head_finetune") for k in missing)
    model = registry.get(method).apply(backbone, dict(NARROW_OPTIONS.get(method, {})))
    fit(model, x, y, epochs=6)
    settle_batchnorms(model, x)
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc >= 0.6, f"{method}: test accuracy {acc:.2f} (chance 0.20)"
