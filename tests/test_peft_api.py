"""The method API: registry, options errors, trainable summary, adapter-only checkpoints."""
from __future__ import annotations

import pytest
import torch

from models.classifier import METHODS, build_model
from models.errors import CheckpointError, ConfigError
from models.peft import registry
from models.peft.adapter_io import adapter_keys, backbone_hash, load_adapter, save_adapter
from models.peft.base import Method, trainable_summary
from small_models import ALL_CASES, small_case, train_step

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::models.peft.point_peft.model.MissingMemoryBankWarning")]

SMALL = dict(num_group=16, group_size=8, depth=2, drop_path_rate=0.0)  # this file's (small_models has its own)
PEFT_SMALL = dict(SMALL, depth=6)


def test_registry_lists_every_method_package_once_in_table_order():
    names = list(registry.methods())
    assert names[0] == "full"
    assert {"point_peft", "point_peft_faithful"} <= set(names)
    assert list(METHODS) == names
    orders = [registry.get(n).order for n in names]
    assert orders == sorted(orders)
    for name in names:
        m = registry.get(name)
        assert isinstance(m, Method) and m.name == name and m.display and m.paper and m.backbones


def test_unknown_method_and_unknown_option_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown method 'nope'; valid: full"):
        build_model("point_mae", 15, method="nope", **SMALL)
    with pytest.raises(ConfigError, match="unknown full option 'rank'"):
        build_model("point_mae", 15, method="full", method_options={"rank": 4}, **SMALL)


def test_trainable_summary_line():
    model = build_model("point_mae", 15, method="point_peft_faithful")
    assert trainable_summary(model) == (
        "trainable params: 773,017 || all params: 22,560,409 || trainable%: 3.4264")


def _train_step(model, pts, labels):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    torch.nn.functional.cross_entropy(model(pts), labels).backward()
    opt.step()


def test_adapter_roundtrip_and_refusals(tmp_path):
    torch.manual_seed(0)
    model = build_model("point_mae", 15, method="point_peft", **PEFT_SMALL)
    frozen_hash = backbone_hash(model)
    pts, labels = torch.rand(4, 64, 3) * 2 - 1, torch.arange(4)
    _train_step(model, pts, labels)
    assert backbone_hash(model) == frozen_hash  # training changes only the adapter's tensors
    path = save_adapter(model, tmp_path / "a.pt", "point_peft")
    n_saved = sum(torch.load(path, weights_only=True)["state"][k].numel() for k in adapter_keys(model))
    assert n_saved < sum(p.numel() for p in model.parameters()) / 5
    torch.manual_seed(0)
    fresh = build_model("point_mae", 15, method="point_peft", **PEFT_SMALL)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert not torch.equal(model(pts), fresh(pts))
        load_adapter(fresh, path, "point_peft")
        assert torch.equal(model(pts), fresh(pts))
    with pytest.raises(CheckpointError, match="not 'full'"):
        load_adapter(fresh, path, "full")
    torch.manual_seed(1)  # other frozen weights
    other = build_model("point_mae", 15, method="point_peft", **PEFT_SMALL)
    with pytest.raises(CheckpointError, match="another backbone"):
        load_adapter(other, path)
    (tmp_path / "junk.pt").write_text("x")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_adapter(fresh, tmp_path / "junk.pt")


@pytest.mark.parametrize("backbone, method", ALL_CASES)
def test_every_method_trains_in_float64(backbone, method):
    """A model cast with ``.double()`` runs a training step (tensors a method builds itself,
    such as PointGST's float32 graph basis, meet the tokens in their dtype): its loss and
    gradients are float64, with the float32 model's loss."""
    model, pts, labels = small_case(backbone, method)
    loss32, _ = train_step(model, model, pts, labels)
    model.double()
    loss64, grads64 = train_step(model, model, pts.double(), labels)
    assert loss64.dtype == grads64.dtype == torch.float64 and torch.isfinite(grads64).all()
    assert abs(loss64.item() - loss32.item()) <= 1e-4 * abs(loss64.item())
