"""Loading files laid out as the official checkpoints, and every refusal."""
from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from conftest import parse_state_dict_list
from models.checkpoints import file_sha256, load_checkpoint, read_checkpoint
from models.classifier import build_model
from models.errors import CheckpointError, ConfigError

LISTS = {"point_mae": "point_mae_finetune_state_dict.txt",
         "point_bert": "point_bert_finetune_state_dict.txt",
         "point_m2ae": "point_m2ae_finetune_state_dict.txt"}
# official loading report: loaded (incl. num_batches_tracked), missing (new), unexpected, deleted
COUNTS = {"point_mae": (156, 16, 53, 0), "point_bert": (160, 4, 3, 248), "point_m2ae": (231, 16, 62, 0)}
META = {"optimizer": {}, "epoch": 300, "metrics": {"acc": 90.0}, "best_metrics": {"acc": 91.5}}


def pretrain_state(backbone, random=True):
    """Every section-C key with a tensor of its listed shape and dtype, and its fate.

    Random values where ``random``; otherwise, and always for keys the official loader deletes,
    a per-key constant broadcast from one element (stride 0), which keeps files tiny.
    """
    gen = torch.Generator().manual_seed(0)
    state, fates = {}, {}
    for i, (key, (shape, dtype, fate)) in enumerate(parse_state_dict_list(LISTS[backbone], "C").items()):
        dt = getattr(torch, dtype)
        if fate == "deleted" or not random:
            value = torch.full([1] * len(shape), i, dtype=dt).expand(shape)
        elif dt.is_floating_point:
            value = torch.randn(shape, generator=gen)
        else:
            value = torch.randint(0, 1000, shape, generator=gen, dtype=dt)
        state[key], fates[key] = value, fate
    return state, fates


def save(path, state, prefix="", **extra):
    torch.save({"base_model": {prefix + k: v for k, v in state.items()}, **META, **extra}, path)
    return path


def one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert str(needle) in msg, msg
    return msg


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("backbone", sorted(LISTS))
def test_official_pretrain_layout_loads_every_tensor_into_its_parameter(tmp_path, backbone, prefix):
    state, fates = pretrain_state(backbone)
    path = save(tmp_path / "pretrain.pth", state, prefix)
    model = build_model(backbone, 15)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_checkpoint(model, path, backbone)

    loaded, missing, unexpected, dropped = COUNTS[backbone]
    assert (len(report.loaded), len(report.missing), len(report.unexpected), len(report.dropped)) == \
        (loaded, missing, unexpected, dropped)
    after = model.state_dict()
    for key, fate in fates.items():
        if fate.startswith("-> "):
            assert torch.equal(after[fate[3:]], state[key]), key
    assert set(report.unexpected) == {k for k, f in fates.items() if f == "unexpected"}
    assert set(report.dropped) == {k for k, f in fates.items() if f == "deleted"}
    targets = {f[3:] for f in fates.values() if f.startswith("-> ")}
    new = [k for k in parse_state_dict_list(LISTS[backbone], "A") if k not in targets]
    assert report.missing == [k for k in new if not k.endswith("num_batches_tracked")]
    for key in new:  # the new keys keep their initial values
        assert torch.equal(after[key], before[key]), key
    assert report.meta["epoch"] == 300 and report.meta["metrics"] == {"acc": 90.0}
    assert report.meta["best_metrics"] == {"acc": 91.5} and report.meta["module_prefixed"] == (
        len(state) if prefix else 0)
    assert f"loaded {loaded}," in report.summary()


@pytest.mark.parametrize("backbone", sorted(LISTS))
def test_finetuned_checkpoint_round_trips_strictly(tmp_path, backbone):
    torch.manual_seed(1)
    source = build_model(backbone, 15)
    path = save(tmp_path / "ckpt-best.pth", source.state_dict(), "module.")
    for kind in ("finetune", "auto"):
        torch.manual_seed(2)
        target = build_model(backbone, 15)
        report = load_checkpoint(target, path, backbone, kind=kind)
        assert report.kind == "finetune" and not report.missing and not report.unexpected
        assert len(report.loaded) == len(source.state_dict())
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), key


def test_a_40_logit_head_needs_allow_missing_head(tmp_path):
    """Official Point-BERT ScanObjectNN checkpoints have 40 logits (official configs)."""
    path = save(tmp_path / "ckpt-best.pth", build_model("point_bert", 40).state_dict())
    model = build_model("point_bert", 15)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path, "point_bert", kind="finetune")
    one_line_error(err, path, "cls_head_finetune.3.weight expected [15, 256] found [40, 256]")
    report = load_checkpoint(model, path, "point_bert", kind="finetune", allow_missing=("head",))
    assert report.skipped == ["cls_head_finetune.3.weight", "cls_head_finetune.3.bias"]
    assert len(report.loaded) == 162


def test_model_declared_new_keys_are_expected_missing(tmp_path):
    """A PEFT model lists the tensors it adds in ``checkpoint_new_keys``."""
    state, _ = pretrain_state("point_bert", random=False)
    path = save(tmp_path / "pretrain.pth", state)
    model = build_model("point_bert", 15)
    model.prompt = nn.Parameter(torch.zeros(10, 384))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path, "point_bert")
    one_line_error(err, path, "1 model key(s) missing", "prompt")
    model.checkpoint_new_keys = ("prompt",)
    missing = load_checkpoint(model, path, "point_bert").missing
    assert "prompt" in missing and len(missing) == 5


def test_containers_and_hash(tmp_path):
    state = {"a.weight": torch.ones(2, 3), "b": torch.arange(4)}
    for i, wrap in enumerate([lambda s: s, lambda s: {"model": s}, lambda s: {"state_dict": s, "epoch": 3}]):
        path = tmp_path / f"c{i}.pth"
        torch.save(wrap({"module." + k: v for k, v in state.items()}), path)
        got, meta = read_checkpoint(path)
        assert list(got) == list(state) and all(torch.equal(got[k], state[k]) for k in state)
        assert meta["container"] == [None, "model", "state_dict"][i]
    assert meta["epoch"] == 3
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_report_hash_is_the_file_hash(tmp_path):
    state, _ = pretrain_state("point_m2ae", random=False)
    path = save(tmp_path / "pre-train.pth", state)
    report = load_checkpoint(build_model("point_m2ae", 15), path, "point_m2ae")
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ refusals, each one line
def test_missing_backbone_key_is_an_error(tmp_path):
    state, _ = pretrain_state("point_mae", random=False)
    del state["MAE_encoder.blocks.blocks.3.attn.qkv.weight"]
    path = save(tmp_path / "pretrain.pth", state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_model("point_mae", 15), path, "point_mae")
    one_line_error(err, path, "1 model key(s) missing", "blocks.blocks.3.attn.qkv.weight")


def test_wrong_shape_is_an_error(tmp_path):
    state, _ = pretrain_state("point_mae", random=False)
    state["MAE_encoder.pos_embed.0.weight"] = torch.zeros(128, 4)
    path = save(tmp_path / "pretrain.pth", state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_model("point_mae", 15), path, "point_mae")
    one_line_error(err, path, "pos_embed.0.weight expected [128, 3] found [128, 4]")


def test_unexpected_key_in_a_finetuned_file_is_an_error(tmp_path):
    model = build_model("point_mae", 15)
    path = save(tmp_path / "ckpt-best.pth", {**model.state_dict(), "extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path, "point_mae", kind="finetune")
    one_line_error(err, path, "not in the model", "extra.weight")


def test_other_backbones_file_is_refused_with_a_hint(tmp_path):
    state, _ = pretrain_state("point_m2ae", random=False)
    path = save(tmp_path / "pre-train.pth", state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_model("point_mae", 15), path, "point_mae")
    one_line_error(err, path, "only 0 of", "Point-M2AE", "h_encoder.")


def test_old_m2ae_naming_is_refused(tmp_path):
    state = {"MAE_encoder.encoders.0.first_conv.0.weight": torch.zeros(128, 3, 1),
             "MAE_encoder.blocks.0.blocks.0.norm1.weight": torch.zeros(96)}
    path = save(tmp_path / "pre-train.pth", state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_model("point_m2ae", 15), path, "point_m2ae")
    one_line_error(err, path, "old Point-M2AE naming", "MAE_encoder.encoders.0.first_conv.0.weight")


@pytest.mark.parametrize("content", ["truncated", "text", "list", "empty-dict"])
def test_unreadable_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "ckpt.pth"
    if content == "truncated":
        torch.save({"base_model": {"w": torch.randn(1000)}, **META}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "text":
        path.write_text("epoch 300\nacc 90.0\n")
    elif content == "list":
        torch.save([torch.zeros(3), 1], path)
    else:
        torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    one_line_error(err, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(build_model("point_bert", 15), path, "point_bert")


def test_missing_file_and_bad_arguments(tmp_path):
    model = build_model("point_bert", 15)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path / "nope.pth", "point_bert")
    one_line_error(err, "nope.pth", "not found")
    path = save(tmp_path / "x.pth", {"w": torch.zeros(1)})
    with pytest.raises(ConfigError, match="point_bert"):
        load_checkpoint(model, path, "pointbert")
    with pytest.raises(ConfigError, match="matches no key"):
        load_checkpoint(model, path, "point_bert", allow_missing=("decoder.*",))
