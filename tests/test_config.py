"""Run configs: _base_ inheritance, strict validation, overrides, hashing, run ids, recipes."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from harness import config as C
from models.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def chain(tmp_path):
    write(tmp_path / "bases" / "root.yaml",
          "model: {backbone: point_mae, method_options: {a: 1, b: [1, 2]}}\n"
          "data: {dataset: scanobjectnn_obj_bg, root: data/x}\n"
          "optim: {lr: 5e-4, betas: [0.9, 0.999]}\n"
          "train: {vote: {enabled: true, repeats: 3}}\n")
    write(tmp_path / "bases" / "mid.yaml",
          "_base_: root.yaml\nmodel: {method_options: {b: [3]}}\ntrain: {vote: {votes: 5}}\n")
    return write(tmp_path / "run.yaml", "_base_: bases/mid.yaml\ntrain: {batch_size: 16}\n")


def test_base_chain_deep_merges_and_lists_replace(chain):
    cfg = C.load_config(chain)
    assert cfg.model.method_options == {"a": 1, "b": (3,)}          # dicts merge, lists replace
    assert cfg.train.vote == C.VoteConfig(enabled=True, votes=5, repeats=3, weights="best_test")
    assert cfg.train.batch_size == 16 and cfg.optim.lr == 5e-4       # 5e-4 read as a float
    assert cfg.optim.betas == (0.9, 0.999)
    # resolved: npoints / point_all / cosine length filled in
    assert (cfg.data.npoints, cfg.data.point_all, cfg.schedule.cosine_epochs) == (2048, 2400, 300)


def test_overrides_are_yaml_and_merge_last(chain):
    cfg = C.load_config(chain, ["train.seed=3", "optim.betas=[0.8, 0.9]", "model.method_options.c=x"])
    assert cfg.train.seed == 3 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.model.method_options == {"a": 1, "b": (3,), "c": "x"}
    # the mapping form used by the matrix expansion gives the same config
    tree = C.load_yaml(chain)
    same = C.resolve(tree, {"train.seed": 3, "optim.betas": [0.8, 0.9], "model.method_options.c": "x"})
    assert same == cfg


@pytest.mark.parametrize("text, key, words", [
    ("train: {batchsize: 4}", "train.batchsize", ["valid keys under train", "batch_size"]),
    ("trian: {seed: 1}", "trian", ["valid keys under the top level", "train"]),
    ("train: {vote: {vots: 3}}", "train.vote.vots", ["votes", "repeats"]),
])
def test_unknown_key_names_file_and_key(chain, tmp_path, text, key, words):
    bad = write(tmp_path / "bad.yaml", f"_base_: run.yaml\n{text}\n")
    with pytest.raises(ConfigError) as err:
        C.load_config(bad)
    msg = str(err.value)
    assert msg.startswith(str(bad)) and repr(key) in msg and "\n" not in msg
    assert all(w in msg for w in words)


def test_unknown_key_in_a_base_names_the_base(chain, tmp_path):
    write(tmp_path / "bases" / "mid.yaml", "_base_: root.yaml\noptim: {learning_rate: 1}\n")
    with pytest.raises(ConfigError, match=r"bases/mid\.yaml: unknown key 'optim\.learning_rate'"):
        C.load_config(chain)


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("train.batch_size=2.5", "train.batch_size: expected an integer"),
    ("train.deterministic=1", "train.deterministic: expected true/false"),
    ("train.amp=fp32", "train.amp: expected one of 'none', 'bf16', 'fp16'"),
    ("optim.betas=[0.9]", "optim.betas: expected a list of 2 numbers"),
    ("model.method=nope", "model.method: unknown method 'nope'"),
    ("model.backbone=point_m2ae model.method=idpt", "model.method: method 'idpt' has no recipe for backbone 'point_m2ae'"),
    ("data.dataset=shapenet", "data.dataset: unknown dataset 'shapenet'"),
    ("data.npoints=300", "data.npoints: 300 has no official point_all"),
    ("train.nope=1", "--set: unknown key 'train.nope'"),
    ("train.compile=true train.engine=deepspeed", "train.compile: true is not supported with train.engine: deepspeed"),
])
def test_bad_values_are_one_line_errors(chain, override, expected):
    with pytest.raises(ConfigError) as err:
        C.load_config(chain, override.split())
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_bad_yaml_and_cycles(tmp_path):
    a = write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        C.load_config(a)
    with pytest.raises(ConfigError, match="not found"):
        C.load_config(tmp_path / "missing.yaml")
    broken = write(tmp_path / "broken.yaml", "train: {seed: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load_config(broken)


def test_hash_ignores_non_result_fields_and_run_id(chain):
    cfg = C.load_config(chain)
    same = C.load_config(chain, ["output.runs_dir=/elsewhere", "data.num_workers=7", "output.progress=true",
                                 "data.root=/mnt/other", "experiment=demo"])
    other = C.load_config(chain, ["train.seed=1"])
    assert C.config_hash(cfg) == C.config_hash(same) != C.config_hash(other)
    assert len(C.config_hash(cfg)) == 64
    rid = C.run_id(cfg)
    assert rid.startswith("point_mae-full-scanobjectnn_obj_bg-s0-") and rid.endswith(C.config_hash(cfg)[:10])
    # writing a default explicitly does not change the identity
    assert C.config_hash(C.load_config(chain, ["data.npoints=2048", "schedule.cosine_epochs=300"])) == C.config_hash(cfg)
    # the record's config dict rebuilds the same config
    assert C.config_from_dict(C.to_dict(cfg)) == cfg


def test_config_is_frozen(chain):
    cfg = C.load_config(chain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.seed = 5  # type: ignore[misc]


def test_missing_dataset_root_is_one_line(chain):
    cfg = C.load_config(chain, ["data.root=/nonexistent/scanobjectnn"])
    with pytest.raises(ConfigError) as err:
        C.check_paths(cfg)
    assert "data.root: dataset folder not found: /nonexistent/scanobjectnn" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("recipes/*.yaml"))
                         + [REPO / "experiments" / "tiny.yaml", REPO / "experiments" / "tiny_peft.yaml"],
                         ids=lambda p: p.name)
def test_recipes_validate(path):
    cfg = C.load_config(path, ["model.allow_random_init=true"])  # recipes name no checkpoint
    assert cfg.optim.weight_decay == 0.05 and cfg.optim.grad_clip == 10.0


def test_official_recipe_values():
    cfg = C.load_config(REPO / "experiments" / "recipes" / "official.yaml")
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.eps) == (5e-4, (0.9, 0.999), 1e-8)
    s = cfg.schedule
    assert (s.epochs, s.cosine_epochs, s.warmup_epochs, s.warmup_lr, s.min_lr, s.lag) == (301, 300, 10, 1e-6, 1e-6, True)
    t = cfg.train
    assert (t.batch_size, t.eval_batch_size, t.label_smoothing, t.augmentation) == (32, 64, 0.0, "scale_translate")
    aug = C.load_config(REPO / "experiments" / "recipes" / "aug.yaml")
    assert aug.train.augmentation == "aug_rotate_y" and aug.record_variant == "aug"
    m2ae = C.load_config(REPO / "experiments" / "recipes" / "m2ae_modelnet40.yaml")
    assert m2ae.train.label_smoothing == 0.3 and m2ae.data.npoints == 1024


def test_cli_print_config_and_missing_root(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness.cli.train", "experiments/tiny.yaml", "--print-config",
                          "--set", "train.seed=4"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"run_id": "point_mae-full-scanobjectnn_obj_only-s4-' in out.stdout
    runs = tmp_path / "runs"
    out = subprocess.run([sys.executable, "-m", "harness.cli.train", "experiments/tiny.yaml", "--runs-dir", str(runs),
                          "--set", "data.root=/nonexistent/synth"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: data.root: dataset folder not found: /nonexistent/synth (dataset scanobjectnn_obj_only; "
        "write synthetic data with `run_all.py data synth`)"]
    assert not runs.exists()   # nothing was done


def test_train_command_registers_with_run_all(tmp_path):
    import argparse

    from harness.cli import train as train_cli

    parser = argparse.ArgumentParser(prog="run_all.py")
    train_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "experiments/tiny.yaml", "--set", "train.seed=2", "optim.lr=1e-3",
                              "--set", "data.root=/x", "--runs-dir", str(tmp_path)])
    assert args.func is train_cli.run and args.config == Path("experiments/tiny.yaml")
    assert args.overrides == [["train.seed=2", "optim.lr=1e-3"], ["data.root=/x"]]
    cfg = train_cli._load(argparse.Namespace(**{**vars(args), "config": REPO / args.config}))
    assert (cfg.train.seed, cfg.optim.lr, cfg.data.root, cfg.output.runs_dir) == (2, 1e-3, "/x", str(tmp_path))
