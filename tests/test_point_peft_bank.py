"""Memory banks: build with the query encoder, save / load with checks, the build-cache command."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from harness.memory_bank import (MemoryBankError, bank_drop_last, build_memory_bank, load_memory_bank,
                                 read_memory_bank, save_memory_bank)
from test_point_peft import points, small_model


pytestmark = pytest.mark.usefixtures("one_thread")


def loader(n=10, batch=4, drop_last=True):
    data = TensorDataset(points(n), torch.zeros(n, dtype=torch.long))
    return DataLoader(data, batch_size=batch, shuffle=False, drop_last=drop_last)


def test_build_bank_is_the_normalised_query_features():
    model = small_model(bank_columns=0)
    result = build_memory_bank(model, loader(), progress=False, dataset="toy", split="train")
    bank, meta = result["bank"], result["meta"]
    assert bank.shape == (384, 8)  # 10 samples, batch 4, drop_last: 2 batches
    expected = F.normalize(model.query_features(points(10)[:8]), dim=1).t()
    torch.testing.assert_close(bank, expected, atol=1e-5, rtol=1e-5)
    assert meta["backbone"] == "point_mae" and meta["checkpoint"] == "random-init"
    assert (meta["count"], meta["feature_dim"], meta["normalize"], meta["dataset"]) == (8, 384, True, "toy")
    raw = build_memory_bank(model, loader(drop_last=False), progress=False, normalize=False)["bank"]
    assert raw.shape == (384, 10) and not torch.allclose(raw.norm(dim=0), torch.ones(10))


def test_saved_bank_loads_onto_the_model_and_mismatches_are_one_line_errors(tmp_path):
    model = small_model(bank_columns=0)
    result = build_memory_bank(model, loader(), progress=False, dataset="toy", split="train")
    path = save_memory_bank(tmp_path / "banks" / "bank.pt", result)
    assert not list(path.parent.glob("*.tmp"))
    bank = load_memory_bank(path, model, expect={"dataset": "toy", "normalize": True})
    assert model.has_memory_bank and torch.equal(model.memory_bank, bank)
    assert model(points(2)).shape == (2, 15)

    with pytest.raises(MemoryBankError, match="dataset is 'toy', expected 'other'"):
        load_memory_bank(path, model, expect={"dataset": "other"})
    bert = small_model("point_bert", bank_columns=0)
    with pytest.raises(MemoryBankError) as err:
        load_memory_bank(path, bert)
    assert "backbone is 'point_mae', expected 'point_bert'" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    small_dim = {"bank": torch.randn(96, 8), "meta": {**result["meta"], "feature_dim": 96}}
    save_memory_bank(tmp_path / "dim.pt", small_dim)
    with pytest.raises(MemoryBankError, match="feature_dim is 96, expected 384"):
        load_memory_bank(tmp_path / "dim.pt", model)
    other_ckpt = {"bank": result["bank"], "meta": {**result["meta"], "checkpoint": "ab" * 32}}
    save_memory_bank(tmp_path / "ckpt.pt", other_ckpt)
    with pytest.raises(MemoryBankError, match="checkpoint is 'abababababab...', expected 'random-init'"):
        load_memory_bank(tmp_path / "ckpt.pt", model)
    (tmp_path / "junk.pt").write_text("not a bank")
    with pytest.raises(MemoryBankError, match="not a readable torch file"):
        read_memory_bank(tmp_path / "junk.pt")
    with pytest.raises(MemoryBankError, match="file not found"):
        read_memory_bank(tmp_path / "missing.pt")


def test_bank_path_option_loads_the_bank(tmp_path):
    model = small_model(bank_columns=0)
    path = save_memory_bank(tmp_path / "bank.pt", build_memory_bank(model, loader(), progress=False))
    again = small_model(bank_columns=0, bank_path=str(path))
    assert again.has_memory_bank and again.memory_bank.shape == (384, 8)


def args_list(root, out):
    return ["build-cache", "--backbone", "point_mae", "--dataset", "scanobjectnn_obj_bg", "--root", str(root),
            "--out", str(out), "--batch-size", "3", "--npoints", "256", "--no-progress",
            "--backbone-option", "num_group=16", "--backbone-option", "group_size=8",
            "--option", "query_num_group=8", "--option", "query_group_size=8"]


def test_build_cache_command_on_a_synthetic_dataset(tmp_path, capsys):
    from harness.cli import build_cache
    from harness.data.synthetic import write_synthetic

    root = write_synthetic("scanobjectnn_obj_bg", tmp_path / "data", train_per_class=2, test_per_class=1,
                           num_classes=5)
    parser = argparse.ArgumentParser()
    build_cache.register(parser.add_subparsers())
    out = tmp_path / "bank.pt"
    args = parser.parse_args(args_list(root, out))
    assert args.func(args) == 0
    assert "384 x 10 (point_mae, scanobjectnn_obj_bg train of 10," in capsys.readouterr().out  # every sample
    meta = read_memory_bank(out)["meta"]
    assert (meta["dataset"], meta["split"], meta["npoints"]) == ("scanobjectnn_obj_bg", "train", 256)
    assert (meta["count"], meta["drop_last"], meta["left_out"]) == (10, False, 0)
    model = small_model(bank_columns=0)
    load_memory_bank(out, model)
    assert model.memory_bank.shape == (384, 10)
    # faithful mode reproduces the official drop_last, and the bank says so
    faithful = tmp_path / "faithful.pt"
    args = parser.parse_args([*args_list(root, faithful), "--option", "mode=faithful"])
    assert args.func(args) == 0
    assert "384 x 9 (point_mae, scanobjectnn_obj_bg train of 10, 1 left out (faithful drop_last)" in capsys.readouterr().out
    meta = read_memory_bank(faithful)["meta"]
    assert (meta["count"], meta["drop_last"], meta["left_out"]) == (9, True, 1)


def test_bank_covers_every_training_sample_unless_faithful():
    """127 samples in batches of 32: 127 columns; the official drop_last (faithful mode) keeps 96."""
    data = TensorDataset(points(127), torch.zeros(127, dtype=torch.long))
    for mode, columns in (("fixed", 127), ("faithful", 96)):
        model = small_model(mode=mode, bank_columns=0)
        batches = DataLoader(data, batch_size=32, shuffle=False, drop_last=bank_drop_last(model))
        meta = build_memory_bank(model, batches, progress=False)["meta"]
        assert (meta["count"], meta["left_out"], meta["drop_last"]) == (columns, 127 - columns, mode == "faithful")


# ------------------------------------------------------------------ banks that do not belong to the run
def _bank(model, split="train", dataset="scanobjectnn_obj_bg"):
    return build_memory_bank(model, loader(), progress=False, dataset=dataset, split=split)


def test_a_test_split_bank_is_refused_as_leakage(tmp_path):
    model = small_model(bank_columns=0)
    path = save_memory_bank(tmp_path / "test_bank.pt", _bank(model, split="test"))
    with pytest.raises(MemoryBankError) as err:
        load_memory_bank(path, model)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg and "'test' split" in msg and "leak" in msg
    assert not model.has_memory_bank


def test_a_bank_of_another_dataset_is_refused_by_a_run(tmp_path):
    from harness.config import resolve
    from harness.train import _prepare_memory_bank

    model = small_model(bank_columns=0)
    path = save_memory_bank(tmp_path / "bg.pt", _bank(model, dataset="scanobjectnn_obj_bg"))
    cfg = resolve({}, {"model.method": "point_peft", "model.method_options.bank_path": str(path),
                       "data.dataset": "modelnet40", "data.root": str(tmp_path), "model.allow_random_init": True})
    with pytest.raises(MemoryBankError) as err:
        _prepare_memory_bank(cfg, model, None, tmp_path, None, "cpu", False, print)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg
    assert "dataset is 'scanobjectnn_obj_bg', expected 'modelnet40'" in msg
    cfg = resolve({}, {"model.method": "point_peft", "model.method_options.bank_path": str(path),
                       "data.dataset": "scanobjectnn_obj_bg", "data.root": str(tmp_path), "model.allow_random_init": True})
    record = _prepare_memory_bank(cfg, model, None, tmp_path, None, "cpu", False, print)
    assert record["meta"]["dataset"] == "scanobjectnn_obj_bg" and len(record["sha256"]) == 64


@pytest.mark.parametrize("field,value,needle", [("count", 80, "count=80"), ("feature_dim", 256, "feature_dim=256")])
def test_a_bank_whose_tensor_disagrees_with_its_metadata_is_refused(tmp_path, field, value, needle):
    from models.peft.point_peft.memory_bank import FORMAT, VERSION

    model = small_model(bank_columns=0)
    built = build_memory_bank(model, DataLoader(TensorDataset(points(10), torch.zeros(10, dtype=torch.long)),
                                                batch_size=10), progress=False, dataset="toy", split="train")
    assert built["bank"].shape == (384, 10)
    path = tmp_path / "bad.pt"
    torch.save({"format": FORMAT, "version": VERSION, "bank": built["bank"],
                "meta": {**built["meta"], field: value}}, path)
    for call in (lambda: read_memory_bank(path), lambda: load_memory_bank(path, model)):
        with pytest.raises(MemoryBankError) as err:
            call()
        msg = str(err.value)
        assert len(msg.splitlines()) == 1 and str(path) in msg and "(384, 10)" in msg and needle in msg
    with pytest.raises(MemoryBankError, match=needle):   # and such a file is never written
        save_memory_bank(tmp_path / "never.pt", {"bank": built["bank"], "meta": {**built["meta"], field: value}})
    assert not (tmp_path / "never.pt").exists()


def test_build_cache_help_promise_holds_for_a_test_split_bank(tmp_path, capsys):
    """``build-cache --help`` says a bank of the test split is refused: build one, try it."""
    from harness.cli import build_cache
    from harness.data.synthetic import write_synthetic

    root = write_synthetic("scanobjectnn_obj_bg", tmp_path / "data", train_per_class=1, test_per_class=2,
                           num_classes=5)
    parser = argparse.ArgumentParser()
    build_cache.register(parser.add_subparsers())
    assert "a test-split bank is refused" in parser.format_help() + build_cache.HELP + \
        " ".join(a.help or "" for a in parser._subparsers._group_actions[0].choices["build-cache"]._actions)
    out = tmp_path / "test_bank.pt"
    args = parser.parse_args([
        "build-cache", "--backbone", "point_mae", "--dataset", "scanobjectnn_obj_bg", "--root", str(root),
        "--split", "test", "--out", str(out), "--batch-size", "5", "--npoints", "256", "--no-progress",
        "--backbone-option", "num_group=16", "--backbone-option", "group_size=8",
        "--option", "query_num_group=8", "--option", "query_group_size=8"])
    assert args.func(args) == 0
    with pytest.raises(MemoryBankError, match="'test' split"):
        load_memory_bank(out, small_model(bank_columns=0))
