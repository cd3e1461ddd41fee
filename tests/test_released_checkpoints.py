"""The authors' released files: Point-PEFT fine-tuned checkpoints (on Point-MAE and Point-M2AE),
pre-training files and the bare memory bank, written here in exactly the official layouts.

The official names and shapes below are written out from the official Point-PEFT model code
(``MAE/models/Point_Mask_Rev_FT_scan_cp.py``, ``M2AE/models/Point_Mask_Rev_FT_scan.py``,
``models/adapter_super.py``): the backbone part from the official fine-tune state-dict lists
(tests/reference), the Point-PEFT part per block / stage; they are not taken from our model.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import parse_state_dict_list
from harness.cli import main as cli_main
from models.checkpoints import file_sha256, load_checkpoint
from models.classifier import build_model
from models.errors import CheckpointError
from models.peft.point_peft.memory_bank import MemoryBankError, load_memory_bank
from test_checkpoints import one_line_error, pretrain_state, save

pytestmark = pytest.mark.usefixtures("one_thread")

M2AE_RENAMES = (("h_encoder.token_embed.", "encoders."), ("h_encoder.encoder_pos_embeds.", "pos_embeds."),
                ("h_encoder.encoder_blocks.", "blocks."))


def _adapter(prefix: str, dim: int, hidden: int) -> dict:
    return {f"{prefix}.ln1.weight": [hidden, dim], f"{prefix}.ln1.bias": [hidden],
            f"{prefix}.ln2.weight": [dim, hidden], f"{prefix}.ln2.bias": [dim]}


def _block_extras(prefix: str, dim: int, tokens: int, cache: bool) -> dict:
    out = {**_adapter(f"{prefix}.adapter", dim, 16), **_adapter(f"{prefix}.adapter1", dim, 16),
           f"{prefix}.ad_gate": [1], f"{prefix}.prompt_embeddings": [tokens, dim]}
    if cache:
        out.update(_adapter(f"{prefix}.cp_adapter", 384, 8))
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        out[f"{prefix}.out_transform.0.{leaf}"] = [dim]
    out[f"{prefix}.out_transform.0.num_batches_tracked"] = []
    return out


def _stage_extras(prefix: str, dim: int) -> dict:
    return {f"{prefix}.attn1.qkv.weight": [54, dim], f"{prefix}.attn1.proj.weight": [dim, 18],
            f"{prefix}.attn1.proj.bias": [dim], f"{prefix}.norm3.weight": [dim], f"{prefix}.norm3.bias": [dim]}


def official_keys(backbone: str) -> dict[str, list[int]]:
    """Name -> shape of the official Point-PEFT model's state dict (15 classes)."""
    listed = parse_state_dict_list(f"{backbone}_finetune_state_dict.txt", "A")
    if backbone == "point_mae":
        out = {k: shape for k, (shape, _, _) in listed.items()}
        for i in range(12):   # every block has prompts, cp_adapter and ad_gate (if_third=True)
            out.update(_block_extras(f"blocks.blocks.{i}", 384, 10, cache=True))
        out.update(_stage_extras("blocks", 384))
        out["prompt_cor"] = [10, 3]
        return out
    out = {}
    for key, (shape, _, _) in listed.items():
        for old, new in M2AE_RENAMES:
            key = new + key[len(old):] if key.startswith(old) else key
        out[key] = shape
    for s, dim in enumerate((96, 192, 384)):   # cp_adapter only in the last stage (if_third)
        for j in range(5):
            out.update(_block_extras(f"blocks.{s}.blocks.{j}", dim, 16, cache=s == 2))
        out.update(_stage_extras(f"blocks.{s}", dim))
    out["prompt_cor"] = [16, 3]
    return out


def official_finetuned(backbone: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the official names and shapes (running_var positive, ad_gate open)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_keys(backbone).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


def write_official(tmp_path, backbone: str, prefix: str = "", name: str = "ckpt-best.pth", **changes):
    state = official_finetuned(backbone)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return save(tmp_path / name, state, prefix)


def faithful(backbone: str):
    return build_model(backbone, 15, method="point_peft_faithful")


# ------------------------------------------------------------------ names and strict loads
@pytest.mark.parametrize("backbone", ["point_mae", "point_m2ae"])
def test_model_has_the_official_names_and_shapes_to_the_leaf(backbone):
    ours = {k: list(v.shape) for k, v in faithful(backbone).state_dict().items()}
    assert ours == official_keys(backbone)


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("backbone", ["point_mae", "point_m2ae"])
def test_official_finetuned_file_loads_strictly(tmp_path, backbone, prefix):
    path = write_official(tmp_path, backbone, prefix)
    model = faithful(backbone)
    report = load_checkpoint(model, path, backbone, kind="finetune")
    assert not report.missing and not report.unexpected and report.found.layout == "official"
    state = official_finetuned(backbone)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert load_checkpoint(faithful(backbone), path, backbone, kind="auto").kind == "finetune"


@pytest.mark.parametrize("backbone,key", [("point_mae", "blocks.blocks.3.adapter1.ln2.bias"),
                                          ("point_m2ae", "blocks.1.blocks.4.prompt_embeddings")])
def test_a_file_missing_one_point_peft_tensor_is_one_line(tmp_path, backbone, key):
    path = write_official(tmp_path, backbone, **{key: None})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(faithful(backbone), path, backbone, kind="finetune")
    one_line_error(err, path, "1 model key(s) missing", key)


def test_a_full_finetune_file_onto_a_point_peft_model_says_what_it_is(tmp_path):
    path = save(tmp_path / "full.pth", build_model("point_mae", 15).state_dict())
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(faithful("point_mae"), path, "point_mae", kind="finetune")
    one_line_error(err, path, "missing from the file", "Point-MAE full fine-tuned file",
                   "needs a Point-PEFT fine-tuned file")


@pytest.mark.parametrize("backbone", ["point_mae", "point_m2ae"])
def test_a_finetuned_file_passed_as_pretraining_is_one_line(tmp_path, backbone):
    path = write_official(tmp_path, backbone)
    for model in (faithful(backbone), build_model(backbone, 15)):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(model, path, backbone, kind="pretrain")
        one_line_error(err, path, "Point-PEFT fine-tuned file", "not a pre-training file", "model.finetuned")
    with pytest.raises(CheckpointError) as err:   # nor may it build the query encoder
        faithful(backbone).reset_query_encoder(checkpoint=str(path))
    one_line_error(err, path, "fine-tuned file", "query encoder")


def test_a_pretraining_file_passed_as_finetuned_is_one_line(tmp_path):
    state, _ = pretrain_state("point_mae", random=False)
    path = save(tmp_path / "pretrain.pth", state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(faithful("point_mae"), path, "point_mae", kind="finetune")
    one_line_error(err, path, "Point-MAE pre-training file", "not a fine-tuned file", "model.pretrained")


def test_project_files_with_the_old_names_still_load(tmp_path):
    """The one legacy key map: adapters down/up, a Point-PEFT M2AE model's h_encoder names."""
    state = official_finetuned("point_m2ae")
    old = {}
    for key, value in state.items():
        key = key.replace(".ln1.", ".down.").replace(".ln2.", ".up.")
        for official, project in ((n, o) for o, n in M2AE_RENAMES):
            key = project + key[len(official):] if key.startswith(official) else key
        old[key] = value
    assert any(".down." in k for k in old) and any(k.startswith("h_encoder.") for k in old)
    path = save(tmp_path / "old.pth", old)
    model = faithful("point_m2ae")
    report = load_checkpoint(model, path, "point_m2ae", kind="finetune")
    assert report.found.layout == "project (old names)" and report.meta["legacy_renamed"] > 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ query encoder: two files
@pytest.mark.parametrize("backbone", ["point_mae", "point_m2ae"])
def test_query_encoder_comes_from_the_pretraining_file_whatever_is_loaded_after(tmp_path, backbone):
    from harness.config import resolve
    from harness.train import load_weights

    name = {"point_mae": "pretrain.pth", "point_m2ae": "pre-train.pth"}[backbone]
    pre = save(tmp_path / name, pretrain_state(backbone)[0])
    alone = build_model(backbone, 15, method="point_peft_faithful", pretrained=str(pre)).query_encoder
    for i, prefix in enumerate(["", "module."]):
        fine = write_official(tmp_path, backbone, prefix, name=f"ckpt-{i}.pth")
        cfg = resolve({}, {"model.backbone": backbone, "model.method": "point_peft_faithful",
                           "model.pretrained": str(pre), "model.finetuned": str(fine),
                           "data.dataset": "scanobjectnn_pb_t50_rs", "data.root": str(tmp_path)})
        model = faithful(backbone)
        _, files = load_weights(cfg, model, lambda _: None)
        assert files["finetuned"]["sha256"] == file_sha256(fine)
        two = model.query_encoder.state_dict()
        assert list(two) == list(alone.state_dict())
        for key, value in alone.state_dict().items():
            assert torch.equal(two[key], value), key
        # ... and the model itself holds the fine-tuned tensors
        assert torch.equal(model.state_dict()["norm.weight"], official_finetuned(backbone)["norm.weight"])


def test_point_peft_with_a_finetuned_file_needs_the_pretraining_file(tmp_path):
    from harness.config import resolve
    from harness.train import load_weights
    from models.errors import ConfigError

    fine = write_official(tmp_path, "point_mae")
    cfg = resolve({}, {"model.backbone": "point_mae", "model.method": "point_peft_faithful",
                       "model.finetuned": str(fine), "data.dataset": "scanobjectnn_pb_t50_rs",
                       "data.root": str(tmp_path), "model.allow_random_init": True})
    with pytest.raises(ConfigError, match="also needs model.pretrained"):
        load_weights(cfg, faithful("point_mae"), print)


# ------------------------------------------------------------------ Point-M2AE readout
def test_m2ae_point_peft_readout_takes_token_0_into_the_max():
    """concat(mean, max) over ALL tokens after the final LayerNorm (official ``concat_f``); token
    0 holds the maximum of channel 5, which Point-M2AE's own ScanObjectNN readout skips."""
    torch.manual_seed(0)
    model = faithful("point_m2ae").eval()
    x = torch.randn(2, 64, 384)
    x[:, 0] = 0.0
    x[:, 0, 5] = 50.0        # after the LayerNorm: about sqrt(384) in channel 5, the largest value
    y = model.norm(x)
    assert bool((y[:, 0, 5] > y[:, 1:, 5].max(dim=1).values + 5).all())
    out = model.readout(x)
    assert out.shape == (2, 768) and model.cls_head_finetune[0].in_features == 768
    torch.testing.assert_close(out[:, :384], y.mean(dim=1))
    torch.testing.assert_close(out[:, 384:], y.max(dim=1).values)
    torch.testing.assert_close(out[:, 384 + 5], y[:, 0, 5])
    backbone = build_model("point_m2ae", 15)   # Point-M2AE's own readout: the max skips token 0
    backbone.norm.load_state_dict(model.norm.state_dict())
    assert bool((backbone.pool(x)[:, 384 + 5] < y[:, 0, 5] - 5).all())


# ------------------------------------------------------------------ the official bare bank
def test_official_bare_bank_is_imported_and_its_width_checked(tmp_path):
    model = faithful("point_mae")
    bank = torch.nn.functional.normalize(torch.randn(384, 50), dim=0)
    torch.save(bank, tmp_path / "cache_shape.pt")
    got = load_memory_bank(tmp_path / "cache_shape.pt", model)
    assert torch.equal(got, bank) and torch.equal(model.memory_bank, bank)
    for shape, needle in (((256, 50), "expected (384, M)"), ((50, 384), "looks transposed"),
                          ((384,), "(384, M) float matrix")):
        path = tmp_path / f"bad{len(shape)}{shape[0]}.pt"
        torch.save(torch.randn(shape), path)
        with pytest.raises(MemoryBankError) as err:
            load_memory_bank(path, model)
        one_line_error(err, path, needle)


# ------------------------------------------------------------------ eval and ckpt inspect
@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The three files of each backbone, as the authors' README has users put them in ckpts/."""
    from harness.data.synthetic import write_synthetic

    tmp = tmp_path_factory.mktemp("released")
    root = write_synthetic("scanobjectnn_pb_t50_rs", tmp / "data", train_per_class=1, test_per_class=1,
                           num_classes=3)
    files = {}
    for backbone, pre_name, prefix in (("point_mae", "pretrain.pth", ""), ("point_m2ae", "pre-train.pth", "module.")):
        ckpts = tmp / backbone / "ckpts"
        ckpts.mkdir(parents=True)
        pre = save(ckpts / pre_name, pretrain_state(backbone)[0])
        fine = write_official(ckpts, backbone, prefix)
        bank = ckpts / "cache_shape.pt"
        torch.save(torch.nn.functional.normalize(torch.randn(384, 40), dim=0), bank)
        files[backbone] = (pre, fine, bank)
    return root, files


@pytest.mark.parametrize("backbone", ["point_mae", "point_m2ae"])
def test_eval_runs_on_the_official_files(released, tmp_path, capsys, backbone):
    root, files = released
    pre, fine, bank = files[backbone]
    synthetic = ["--synthetic"] if backbone == "point_m2ae" else []
    code = cli_main(["eval", "--backbone", backbone, "--dataset", "scanobjectnn_pb_t50_rs", "--root", str(root),
                     "--checkpoint", str(fine), "--pretrained", str(pre), "--bank", str(bank),
                     "--evals-dir", str(tmp_path), "--device", "cpu", "--vote", "2", *synthetic])
    out = capsys.readouterr().out
    assert code == 0, out
    line = next(x for x in out.splitlines() if "accuracy" in x)
    assert "majority-class baseline 33.33%" in line and "(3 votes)" not in line and "/3)" in line
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["kind"] == "eval" and record["method"] == "point_peft_faithful"
    assert record["checkpoint"]["sha256"] == file_sha256(fine)
    assert record["pretrained"]["sha256"] == file_sha256(pre)
    assert record["memory_bank"]["source"] == "imported official file"
    assert record["memory_bank"]["sha256"] == file_sha256(bank)
    assert record["data"]["fingerprint"] == record["config"]["data"]["fingerprint"] != "missing"
    assert record["data"]["class_counts"]["test"][:3] == [1, 1, 1] and record["metrics"]["seen"] == 3
    assert record["metrics"]["votes"] == 2 and 0 <= record["metrics"]["acc_vote"] <= 100

    # tables: a "Released checkpoints" section, beside the paper's number only on official data
    (tmp_path / "runs").mkdir()
    assert cli_main(["tables", "--runs", str(tmp_path / "runs"), "--evals", str(tmp_path), "--out",
                     str(tmp_path / "out"), "--no-readme", "--no-plots"]) == 0
    text = (tmp_path / "out" / "tables.md").read_text()
    section = text[text.index("## Released checkpoints"):]
    row = next(x for x in section.splitlines() if record["checkpoint"]["sha256"][:12] in x)
    assert f"{record['metrics']['acc']:.2f} ({record['metrics']['correct']}/3)" in row and "33.33" in row
    assert "not comparable: " in row and "partial data: 3 of 2,882 test samples" in row
    assert ("synthetic data" in row) == bool(synthetic)


def test_eval_refuses_a_bank_of_the_wrong_dimension(released, tmp_path, capsys):
    root, files = released
    pre, fine, _ = files["point_mae"]
    torch.save(torch.randn(256, 40), tmp_path / "bank256.pt")
    code = cli_main(["eval", "--backbone", "point_mae", "--dataset", "scanobjectnn_pb_t50_rs", "--root", str(root),
                     "--checkpoint", str(fine), "--pretrained", str(pre), "--bank", str(tmp_path / "bank256.pt"),
                     "--evals-dir", str(tmp_path / "evals"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "bank256.pt" in err and "(256, 40)" in err and "expected (384, M)" in err
    assert not (tmp_path / "evals").exists()


def test_eval_refuses_swapped_files(released, tmp_path, capsys):
    root, files = released
    pre, fine, bank = files["point_mae"]
    code = cli_main(["eval", "--backbone", "point_mae", "--method", "point_peft_faithful",
                     "--dataset", "scanobjectnn_pb_t50_rs", "--root", str(root),
                     "--checkpoint", str(pre), "--pretrained", str(fine), "--bank", str(bank),
                     "--evals-dir", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(fine) in err and "not a pre-training file" in err


def test_ckpt_inspect_says_what_each_file_is(released, capsys):
    _, files = released
    pre, fine, bank = files["point_m2ae"]
    assert cli_main(["ckpt", "inspect", str(fine)]) == 0
    out = capsys.readouterr().out
    assert f"sha256: {file_sha256(fine)}" in out
    assert "a Point-M2AE Point-PEFT fine-tuned file (official layout)" in out
    n = len(official_keys("point_m2ae"))
    assert f"'module.' prefix on {n} of {n} keys" in out
    assert "strict load onto point_m2ae + point_peft_faithful (15 classes, scan preset): OK as finetune: " \
           f"loaded {n}, missing 0, unexpected 0" in out
    assert cli_main(["ckpt", "inspect", str(pre)]) == 0
    out = capsys.readouterr().out
    assert "a Point-M2AE pre-training file" in out and "strict load onto point_m2ae + full" in out and "OK" in out
    assert cli_main(["ckpt", "inspect", str(bank)]) == 0
    out = capsys.readouterr().out
    assert "bare memory-bank tensor" in out and "(384, 40)" in out


def test_a_runs_own_file_of_trained_tensors_needs_its_pretraining_file(tmp_path):
    """``best_test.pt`` of a Point-PEFT run holds only what training changed; eval loads it on top
    of the pre-training file it was made on, and refuses it on any other."""
    from harness import checkpointing

    pre = save(tmp_path / "pretrain.pth", pretrain_state("point_mae")[0])
    torch.manual_seed(3)
    trained = build_model("point_mae", 15, method="point_peft", pretrained=str(pre))
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(1.0)
    run_file = tmp_path / "best_test.pt"
    torch.save({"format": checkpointing.FORMAT, "epoch": 3, "test_acc": 50.0,
                "model": checkpointing.model_state(trained, True, []), "partial": True,
                "backbone_id": file_sha256(pre)}, run_file)
    torch.manual_seed(4)
    fresh = build_model("point_mae", 15, method="point_peft", pretrained=str(pre))
    report = load_checkpoint(fresh, run_file, "point_mae", kind="finetune", base_sha256=file_sha256(pre))
    assert report.found.layout == "run checkpoint" and report.meta["epoch"] == 3
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_model("point_mae", 15, method="point_peft"), run_file, "point_mae",
                        kind="finetune", base_sha256="0" * 64)
    one_line_error(err, run_file, "trained tensors only", file_sha256(pre), "load that pre-training file first")


def test_eval_from_a_config(released, tmp_path, capsys):
    import yaml

    root, files = released
    pre, fine, bank = files["point_mae"]
    config = tmp_path / "released.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"backbone": "point_mae", "method": "point_peft_faithful", "pretrained": str(pre),
                  "finetuned": str(fine), "method_options": {"bank_path": str(bank)}},
        "data": {"dataset": "scanobjectnn_pb_t50_rs", "root": str(root), "synthetic": True}}))
    code = cli_main(["eval", str(config), "--evals-dir", str(tmp_path / "evals"), "--device", "cpu",
                     "--set", "train.eval_batch_size=2"])
    out = capsys.readouterr().out
    assert code == 0, out
    record = json.loads(next((tmp_path / "evals").glob("*.json")).read_text())
    assert record["config"]["train"]["eval_batch_size"] == 2 and record["data_source"] == "synthetic"
    assert record["checkpoint"]["sha256"] == file_sha256(fine) and record["metrics"]["seen"] == 3


def test_released_table_shows_the_paper_number_only_for_a_comparable_evaluation():
    from harness.results import load_reference
    from harness.results.tables import released_table
    from conftest import REPO

    reference = load_reference(REPO / "results" / "reference" / "paper.csv")
    record = {"kind": "eval", "eval_id": "x", "backbone": "point_mae", "method": "point_peft_faithful",
              "dataset": "scanobjectnn_pb_t50_rs", "split": "test", "variant": "", "data_source": "official",
              "checkpoint": {"sha256": "ab" * 32}, "data": {"samples": 2882},
              "metrics": {"acc": 85.2, "correct": 2455, "seen": 2882, "majority_baseline": 10.8}}
    row = released_table([record], reference).splitlines()[2]
    assert "85.5" in row and "85.20 (2455/2882)" in row and "abababababab" in row and "not comparable" not in row
    partial = {**record, "data": {"samples": 100}}
    assert "not comparable: partial data: 100 of 2,882" in released_table([partial], reference)
