"""PointGST, PPT, GAPrompt and PointLoRA: official counts and names, strict loading of
official-layout state dicts, what one optimiser step changes, LoRA merge, learning on a toy
task, and one test per faithful-vs-default option (the official defects, measured)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.params import count_params
from models.classifier import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

LISTS = Path(__file__).resolve().parent / "reference" / "peft_zoo"
METHODS = ("pointgst", "ppt", "gaprompt", "pointlora")

# method, options, classes, family, total, trainable (official counts; both modes give them but
# GAPrompt's, whose default leaves out the official model's unused tensors: see GAPROMPT_DEFAULT)
COUNTS = [
    ("pointgst", {}, 15, "scan", 22_447_855, 622_831),
    ("pointgst", {}, 40, "modelnet", 22_454_280, 629_256),
    ("ppt", {}, 15, "scan", 22_783_375, 1_042_191),
    ("ppt", {}, 40, "modelnet", 22_789_800, 1_048_616),
    ("gaprompt", {"point_number": 5}, 15, "scan", 22_453_195, 628_147),
    ("gaprompt", {"point_number": 10}, 15, "scan", 22_453_210, 628_162),     # OBJ_BG / OBJ_ONLY
    ("gaprompt", {"point_number": 5, "perturbation": 0.05}, 40, "modelnet", 22_455_524, 630_476),
    ("pointlora", {}, 15, "scan", 22_513_960, 772_752),
    ("pointlora", {}, 40, "scan", 22_520_385, 779_177),   # no ModelNet40 config: 40-class head, scan geometry
]


def read_list(method: str) -> dict[str, list[int]]:
    """``name [shape]`` lines of an official state-dict list -> {name: shape}."""
    path = LISTS / f"{method}_state_dict.txt"
    if not path.is_file():
        pytest.skip(f"reference list {path} is missing")
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split()
        out[name] = [int(s) for s in shape.strip("[]").split(",") if s]
    return out


# GAPrompt default: no prompt_embeddings in blocks 6-11 (23,040), no adapter.scale (4,620), no
# frozen scaler1/2 (24)
GAPROMPT_UNUSED = (23_040 + 4_620 + 24, 23_040 + 4_620)


@pytest.mark.parametrize("mode", ["", "_faithful"])
@pytest.mark.parametrize("method,options,classes,family,total,trainable", COUNTS,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}-{i}" for i, c in enumerate(COUNTS)])
def test_official_counts(method, options, classes, family, total, trainable, mode):
    model = build_model("point_mae", classes, method=method + mode, family=family, method_options=options)
    count = count_params(model)
    if method == "gaprompt" and not mode:
        total, trainable = total - GAPROMPT_UNUSED[0], trainable - GAPROMPT_UNUSED[1]
    assert (count.total, count.trainable) == (total, trainable)


def official(method: str) -> str:
    """The variant whose tensors are the official model's (GAPrompt's default drops unused ones)."""
    return method + "_faithful" if method == "gaprompt" else method


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_names_and_shapes_equal_the_official_list(method):
    model = build_model("point_mae", 15, method=official(method), family="scan")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == read_list(method)


@pytest.mark.parametrize("method", METHODS)
def test_official_layout_state_dict_loads_strictly(method, tmp_path):
    """A file in the official fine-tune layout (``base_model`` with ``module.`` prefixes, every key
    of the official model) loads with strict=True and every value lands."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in read_list(method).items():
        state[name] = (torch.zeros(shape, dtype=torch.int64) if name.endswith("num_batches_tracked")
                       else torch.randn(shape, generator=gen))
    path = tmp_path / "ckpt-best.pth"
    torch.save({"base_model": {f"module.{k}": v for k, v in state.items()}, "epoch": 1}, path)
    loaded = torch.load(path, weights_only=True)["base_model"]
    model = build_model("point_mae", 15, method=official(method), family="scan")
    model.load_state_dict({k.removeprefix("module."): v for k, v in loaded.items()}, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


# ---------------------------------------------------------------------------------------------
# small models for behaviour tests

SMALL = dict(num_group=32, group_size=16, trans_dim=96, depth=2, num_heads=4, encoder_dims=96)
SMALL_OPTIONS = {"pointgst": {"local": 16}, "ppt": {"hidden": 32}, "gaprompt": {},
                 "pointlora": {"select": [8, 4], "scale2_group_size": 32}}


def small(method: str, variant: str = "", classes: int = 4, **options):
    torch.manual_seed(0)
    opts = {**SMALL_OPTIONS[method], **options}
    return build_model("point_mae", classes, method=method + variant, family="scan", method_options=opts, **SMALL)


def cloud(b: int, n: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def randomise_tuned(model) -> None:
    """Give zero-initialised tuned tensors values, so every branch shows in the output."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() >= 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("mode", ["", "_faithful"])
@pytest.mark.parametrize("method", METHODS)
def test_one_step_changes_exactly_the_tuned_tensors(method, mode):
    model = small(method, mode)
    randomise_tuned(model)   # zero-initialised up-projections would leave the rest without gradient
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(cloud(4)), torch.tensor([0, 1, 2, 3]))
    aux = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else None
    (loss + aux if aux is not None else loss).backward()
    opt.step()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[name]), f"frozen {name} moved"
        elif p.grad is not None:
            assert not torch.equal(p, before[name]), f"tuned {name} did not move"
    unused = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    if method == "gaprompt" and mode:   # official: adapter.scale is never used (trainable, gradient-free)
        assert unused and all(".adapter.scale." in n for n in unused)
    else:
        assert not unused


@pytest.mark.parametrize("method", METHODS)
def test_learns_a_toy_task_above_chance(method):
    """Three shape classes (sphere, flat disc, thin rod); 30 steps of AdamW on the tuned tensors
    only bring held-out accuracy well above chance (1/3). BatchNorms stay in eval mode (the
    harness's ``train.freeze_bn``): in so short a run on a random backbone, running statistics
    gathered in train mode do not match eval mode, which would test BatchNorm, not the method."""
    def shapes(n, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 3
        pts = torch.randn(n, 256, 3, generator=g)
        pts = pts / pts.norm(dim=-1, keepdim=True)
        scale = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.05, 1.0], [0.08, 1.0, 0.08]])[labels]
        return pts * scale[:, None, :], labels

    model = small(method, classes=3)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    x, y = shapes(48, 0)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    for step in range(30):
        idx = torch.arange(step * 12, step * 12 + 12) % 48
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        aux = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else None
        (loss + aux if aux is not None else loss).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    xt, yt = shapes(30, 1)
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc >= 0.6, acc


def test_pointlora_merge_keeps_logits():
    model = small("pointlora")
    randomise_tuned(model)
    model.eval()
    x = cloud(2)
    with torch.no_grad():
        before = model(x)
        model.merge()
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
    assert all(not m.lora_B.any() for m in model.modules() if hasattr(m, "lora_B"))


# ---------------------------------------------------------------------------------------------
# faithful vs default: one test per option

def alone_vs_in_batch(model, x) -> float:
    """Largest logit change of sample 1 evaluated alone vs inside the batch (eval mode)."""
    model.eval()
    with torch.no_grad():
        return float((model(x)[1] - model(x[1:2])[0]).abs().max())


def test_pointgst_spectral_scale_batch_dependence():
    x = cloud(4)
    default = small("pointgst")
    randomise_tuned(default)
    faithful = small("pointgst", spectral_scale="batch_residual")
    faithful.load_state_dict(default.state_dict())
    assert alone_vs_in_batch(default, x) < 1e-5
    assert alone_vs_in_batch(faithful, x) > 1e-3


def test_pointgst_transform_is_the_graph_fourier_transform_by_default():
    """U_T maps an eigenvector of the graph to a one-hot spectrum (the GFT); the official U does
    not. With adapt1 = 0 both pairs invert exactly."""
    from models.peft.pointgst.model import PCSA, graph_basis
    pts = cloud(1, 32)[0]
    u = graph_basis(pts[None], "per_sample")[0]
    for transform, one_hot in (("U_T", True), ("U", False)):
        pcsa = PCSA(8, 4, transform)
        forward = u.t() if transform == "U_T" else u
        spectrum = forward @ u[:, 5:6]
        assert torch.allclose(spectrum[:, 0], torch.eye(32)[5], atol=1e-4) == one_hot
        x = torch.randn(1, 32, 4)
        assert torch.allclose(pcsa._spectral(u[None], x, pcsa.norm_ly1), x, atol=1e-4)


def test_gaprompt_index_layout_batch_dependence():
    x = cloud(4)
    default = small("gaprompt")
    randomise_tuned(default)
    faithful = small("gaprompt", index_layout="official")
    faithful.load_state_dict(default.state_dict())
    assert alone_vs_in_batch(default, x) < 1e-4
    assert alone_vs_in_batch(faithful, x) > 1e-3


def _bn_updates(model, x) -> int:
    """Running-statistics updates of the encoder's first BatchNorm (trainable in PPT / PointLoRA,
    so in train mode in both modes) in one training forward."""
    bn = model.encoder.first_conv[1]
    before = int(bn.num_batches_tracked)
    model.train()
    model(x)
    return int(bn.num_batches_tracked) - before


def _same_logits(a, b, x) -> bool:
    a.eval(), b.eval()
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5)


def test_ppt_encoder_runs_once_by_default_twice_faithful():
    """Same logits (the prompts are the patch tokens either way); the faithful second encoder pass
    updates the encoder BatchNorm statistics twice per training step, which then shows in eval."""
    x = cloud(2)
    default, faithful = small("ppt"), small("ppt", encode_prompts_separately=True)
    faithful.load_state_dict(default.state_dict())
    assert _same_logits(default, faithful, x)
    assert (_bn_updates(default, x), _bn_updates(faithful, x)) == (1, 2)
    assert not _same_logits(default, faithful, x)


def test_pointlora_scale1_tokens_reused_by_default():
    x = cloud(2)
    default = small("pointlora", encoder_batch_stats=True)
    faithful = small("pointlora", encoder_batch_stats=True, encode_scale1_separately=True)
    faithful.load_state_dict(default.state_dict())
    assert _same_logits(default, faithful, x)
    assert (_bn_updates(default, x), _bn_updates(faithful, x)) == (2, 3)


def test_pointlora_encoder_batchnorms_keep_pretrained_statistics_by_default():
    """Default: the encoder's BatchNorms (the first one tuned) stay in eval mode, so the scale-2
    pass cannot blend its statistics into the patch tokens'; faithful: train mode, as official."""
    x = cloud(2)
    default, faithful = small("pointlora"), small("pointlora", "_faithful")
    assert default.encoder.first_conv[1].weight.requires_grad
    assert (_bn_updates(default, x), _bn_updates(faithful, x)) == (0, 3)
    assert not default.encoder.first_conv[1].training and faithful.encoder.first_conv[1].training


@pytest.mark.parametrize("method", METHODS)
def test_frozen_batchnorms_keep_pretrained_statistics_by_default(method):
    """Default: the frozen backbone's BatchNorms stay in eval mode in training; faithful: train
    mode, as the official runners leave them."""
    for variant, frozen_training in (("", False), ("_faithful", True)):
        model = small(method, variant).train()
        frozen = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                  and not any(p.requires_grad for p in m.parameters())]
        assert frozen and all(m.training == frozen_training for m in frozen), (method, variant)


def _entropy_after_mask_steps(model, x, steps: int = 3) -> tuple[float, float]:
    """Mean binary entropy of the scale-1 scores before and after SGD on the mask term alone."""
    def entropy():
        with torch.no_grad():
            tokens = model.encoder(model.group_divider(x)[0])
            p = model.lora_mask_predictor(tokens).clamp(1e-6, 1 - 1e-6)
            return float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())
    opt = torch.optim.SGD(model.lora_mask_predictor.parameters(), lr=50.0)
    start = entropy()
    model.train()
    for _ in range(steps):
        model(x)
        model.auxiliary_loss().backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return start, entropy()


def test_pointlora_mask_term_sign():
    """Official sign: the term raises the scores' entropy (towards 0.5); default lowers it."""
    x = cloud(2)
    for options, rises in (({}, False), ({"mask_term": "negative_entropy"}, True)):
        model = small("pointlora", **options)
        with torch.no_grad():   # start away from 0.5 so there is room both ways
            model.lora_mask_predictor.fc2.bias.fill_(1.0)
        start, end = _entropy_after_mask_steps(model, x)
        assert (end > start) == rises, (options, start, end)


def test_pointlora_score_gradient():
    """The task loss reaches the mask predictor by default; officially top-k blocks it."""
    x, y = cloud(2), torch.tensor([0, 1])
    for options, reaches in (({}, True), ({"score_gradient": False}, False)):
        model = small("pointlora", **options)
        model.train()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grad = model.lora_mask_predictor.fc1.weight.grad
        assert (grad is not None and float(grad.abs().sum()) > 0) == reaches, options


def test_options_are_checked_in_one_line():
    from models.errors import ConfigError
    for method, options in (("pointgst", {"transform": "V"}), ("gaprompt", {"index_layout": "x"}),
                            ("gaprompt", {"unused_tensors": "no"}),
                            ("pointlora", {"mask_term": "bce"}), ("ppt", {"encode_prompts_separately": "yes"}),
                            ("pointgst_faithful", {"mode": "default"}), ("ppt", {"colour": 1})):
        with pytest.raises(ConfigError) as err:
            small(method.removesuffix("_faithful"), "_faithful" if method.endswith("_faithful") else "", **options)
        assert "\n" not in str(err.value) and method.split("_")[0] in str(err.value)


@pytest.mark.parametrize("method", ["ppt", "gaprompt", "pointlora"])
def test_point_mae_only_methods_refuse_other_backbones(method):
    from models.errors import ConfigError
    with pytest.raises(ConfigError):
        build_model("point_bert", 15, method=method, family="scan")


def test_pointgst_runs_on_point_bert():
    model = build_model("point_bert", 15, method="pointgst", family="scan",
                        num_group=32, group_size=16, depth=2, method_options={"local": 16})
    assert model(cloud(2)).shape == (2, 15)


@pytest.mark.parametrize("method", METHODS)
def test_adapter_only_round_trip(method, tmp_path):
    """Train a step, save only the tuned tensors (+ trained statistics), load them onto a fresh
    model with the same frozen backbone: identical logits."""
    from models.peft.adapter_io import load_adapter, save_adapter
    model = small(method)
    randomise_tuned(model)
    model.train()
    model(cloud(4))   # BatchNorm statistics move too
    path = save_adapter(model, tmp_path / "adapter.pt", method)
    fresh = small(method)
    load_adapter(fresh, path, method)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(cloud(2, seed=3)), fresh(cloud(2, seed=3)))
