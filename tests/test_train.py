"""End-to-end training runs on tiny synthetic data (CPU): learning, resume after SIGKILL,
2-process DDP equality, failure records, voting and the validation split."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import checkpointing
from harness.config import load_config, run_dir
from harness.results import RECORD_FIELDS
from harness.train import KILL_ENV, NonFiniteLoss, run
from models.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "experiments" / "tiny.yaml"
TINY_PEFT = REPO / "experiments" / "tiny_peft.yaml"
TIMING = {"epoch_time_s", "samples_per_s"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from harness.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synth") / "h5_files"
    return write_synthetic("scanobjectnn_obj_only", root, train_per_class=16, test_per_class=8, seed=0,
                           num_classes=5)


def tiny(path: Path, root: Path, runs: Path, *sets: str):
    return load_config(path, [f"data.root={root}", f"output.runs_dir={runs}", *sets])


def metrics_rows(cfg) -> list[dict]:
    with open(run_dir(cfg) / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]


def final_weights(cfg) -> dict:
    return checkpointing.load(run_dir(cfg) / "checkpoint.pt")["model"]


def cli(*args: str, env: dict | None = None, timeout: int = 300, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] \
        if torchrun else [sys.executable]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*launcher, "-m", "harness.cli.train", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def cli_run(path: Path, root: Path, runs: Path, *sets: str, env: dict | None = None):
    """One run in a fresh process (as a job would run it): (config, record or None, process)."""
    out = cli(str(path), "--runs-dir", str(runs), "--set", f"data.root={root}", *sets, env=env)
    cfg = tiny(path, root, runs, *sets)
    result = run_dir(cfg) / "result.json"
    return cfg, (json.loads(result.read_text()) if result.is_file() else None), out


@pytest.fixture(scope="module")
def full_run(synth, tmp_path_factory):
    cfg, record, out = cli_run(TINY, synth, tmp_path_factory.mktemp("runs-full"))
    assert out.returncode == 0, out.stderr[-3000:]
    return cfg, record


@pytest.mark.slow
def test_full_finetuning_learns(full_run):
    cfg, record = full_run
    assert record["status"] == "done" and record["error"] is None
    m = record["metrics"]
    assert m["acc_last"] >= 60.0 and m["acc_best_test"] >= m["acc_last"]   # chance is 20%
    assert 0 <= m["best_test_epoch"] < 10 and m["acc_best_val"] is None and m["acc_vote"] is None
    assert set(RECORD_FIELDS) <= set(record)
    assert record["params"] == {"total": 703_183, "trainable": 703_183, "with_grad": 703_183}
    assert record["data_source"] == "synthetic" and record["variant"] == "" and record["world_size"] == 1
    assert record["epochs"] == 10 and record["train_samples_per_s"] > 0 and record["peak_memory_bytes"] > 0
    on_disk = json.loads((run_dir(cfg) / "result.json").read_text())
    assert on_disk["run_id"] == record["run_id"] and on_disk["metrics"] == m
    rows = metrics_rows(cfg)
    assert [int(r["epoch"]) for r in rows] == list(range(10))
    assert float(rows[0]["lr"]) == float(rows[1]["lr"]) == 1e-4          # the one-epoch lag
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # a finished run is not run again
    assert run(cfg)["start_time"] == record["start_time"]
    assert "already done" in cli(str(TINY), "--runs-dir", cfg.output.runs_dir, "--set",
                                 f"data.root={cfg.data.root}").stdout


def check_resume(path: Path, root: Path, runs: Path, ref_cfg, ref: dict, kill_after: int, *sets: str) -> str:
    """Kill a run (SIGKILL) right after epoch kill_after's checkpoint, restart it, and compare
    metrics and final weights with the uninterrupted run. Every run is a fresh process: on the
    CPU they agree bit for bit (an in-process run after other work may differ in the last bit)."""
    cfg, record, killed = cli_run(path, root, runs, *sets, env={KILL_ENV: str(kill_after)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert record is None and run_dir(cfg).name == ref["run_id"]
    assert checkpointing.load(run_dir(cfg) / "checkpoint.pt")["epoch"] == kill_after
    cfg, record, out = cli_run(path, root, runs, *sets)          # restarted: resumes
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"after epoch {kill_after}" in out.stdout and record["resumed_from_epoch"] == kill_after
    assert record["metrics"] == ref["metrics"]
    assert metrics_rows(cfg) == metrics_rows(ref_cfg)
    ref_w, w = final_weights(ref_cfg), final_weights(cfg)
    assert ref_w.keys() == w.keys() and all(torch.equal(ref_w[k], w[k]) for k in w)
    return out.stdout


@pytest.mark.slow
def test_resume_after_sigkill_is_identical(full_run, synth, tmp_path):
    ref_cfg, ref = full_run
    check_resume(TINY, synth, tmp_path / "runs", ref_cfg, ref, 6)


@pytest.mark.slow
def test_point_peft_learns_and_saves_only_what_trains(synth, tmp_path):
    cfg = tiny(TINY_PEFT, synth, tmp_path / "runs")
    record = run(cfg)
    assert record["status"] == "done"
    assert record["metrics"]["acc_best_test"] >= 50.0                   # chance is 20%
    p = record["params"]
    assert p["trainable"] < 0.25 * p["total"] and p["with_grad"] <= p["trainable"]
    folder = run_dir(cfg)
    assert (folder / "memory_bank.pt").is_file() and record["memory_bank"]["meta"]["count"] == 80
    state = checkpointing.load(folder / "checkpoint.pt")
    assert state["partial"] and state["backbone_id"] == f"random-init:seed={cfg.train.seed}"
    saved = sum(v.numel() for k, v in state["model"].items() if not k.endswith("num_batches_tracked"))
    assert p["trainable"] <= saved < p["trainable"] + 10_000          # trainable tensors + BN statistics
    assert "blocks.blocks.0.attn.qkv.weight" not in state["model"] and "encoder.first_conv.0.weight" not in state["model"]


@pytest.mark.slow
def test_point_peft_resume_is_identical(synth, tmp_path):
    sets = ("schedule.epochs=3", "train.max_steps_per_epoch=3")
    ref_cfg, ref, out = cli_run(TINY_PEFT, synth, tmp_path / "ref", *sets)
    assert out.returncode == 0, out.stderr[-3000:]
    restarted = check_resume(TINY_PEFT, synth, tmp_path / "runs", ref_cfg, ref, 0, *sets)
    # the restart loaded the memory bank its first attempt built and saved
    assert "building the memory bank" not in restarted


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(synth, tmp_path):
    sets = ("train.freeze_bn=true", "train.disable_dropout=true", "train.augmentation=none",
            "schedule.epochs=2", "train.max_steps_per_epoch=4")
    out = cli(str(TINY), "--runs-dir", str(tmp_path / "ddp"), "--set", f"data.root={synth}", *sets, torchrun=2)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    ddp_cfg = tiny(TINY, synth, tmp_path / "ddp", *sets)
    ddp = json.loads((run_dir(ddp_cfg) / "result.json").read_text())
    assert ddp["world_size"] == 2 and ddp["status"] == "done"
    one_cfg = tiny(TINY, synth, tmp_path / "one", *sets)
    one = run(one_cfg)
    assert one["world_size"] == 1 and one["run_id"] == ddp["run_id"]
    rows_ddp, rows_one = metrics_rows(ddp_cfg), metrics_rows(one_cfg)
    for a, b in zip(rows_ddp, rows_one, strict=True):
        assert int(a["train_samples"]) == int(b["train_samples"]) == 32
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-5, (a, b)
    w_ddp, w_one = final_weights(ddp_cfg), final_weights(one_cfg)
    assert all(torch.allclose(w_ddp[k], w_one[k], atol=1e-5) for k in w_one)


def test_nan_loss_writes_a_failure_record_and_exits_nonzero(synth, tmp_path):
    runs = tmp_path / "runs"
    out = cli(str(TINY), "--runs-dir", str(runs), "--set", f"data.root={synth}", "debug.nan_loss_at_step=2")
    assert out.returncode == 1
    assert "non-finite training loss" in out.stderr
    cfg = tiny(TINY, synth, runs, "debug.nan_loss_at_step=2")
    record = json.loads((run_dir(cfg) / "result.json").read_text())
    assert record["status"] == "failed" and record["metrics"] is None
    assert record["error"]["type"] == "NonFiniteLoss"
    assert "epoch 0, step 2" in record["error"]["message"]
    assert record["error"]["where"].startswith("harness/train.py:")
    # in-process the error propagates after the record is written
    with pytest.raises(NonFiniteLoss):
        run(cfg)


@pytest.mark.slow
def test_vote_and_validation_split(synth, tmp_path):
    cfg = tiny(TINY, synth, tmp_path / "runs", "schedule.epochs=2", "train.max_steps_per_epoch=3",
               "data.val_fraction=0.25", "train.vote.enabled=true", "train.vote.repeats=2", "train.vote.votes=2",
               "output.tensorboard=true")
    record = run(cfg)
    m = record["metrics"]
    assert {k: record["data"][k] for k in ("train", "val", "test", "npoints", "point_all")} == \
        {"train": 60, "val": 20, "test": 40, "npoints": 128, "point_all": 128}
    assert m["best_val_epoch"] in (0, 1) and m["acc_best_val"] is not None and m["acc_vote"] is not None
    assert (run_dir(cfg) / "best_test.pt").is_file()
    assert list((run_dir(cfg) / "tb").glob("events.out.tfevents.*"))
    rows = metrics_rows(cfg)
    assert all(r["val_acc"] != "" and r["test_acc"] != "" for r in rows)


def test_deepspeed_asked_for_but_absent_is_one_line(synth, tmp_path):
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError) as err:
        run(tiny(TINY, synth, runs, "train.engine=deepspeed"))
    assert str(err.value).startswith("train.engine: deepspeed is not installed") and "\n" not in str(err.value)
    assert not runs.exists()


@pytest.mark.slow
def test_deepspeed_engine_matches_the_ddp_engine(synth, tmp_path):
    pytest.importorskip("deepspeed")
    sets = ("schedule.epochs=2", "train.max_steps_per_epoch=2")
    for engine, zero in (("ddp", 0), ("deepspeed", 0), ("deepspeed", 2)):
        runs = tmp_path / f"{engine}{zero}"
        out = cli(str(TINY), "--runs-dir", str(runs), "--set", f"data.root={synth}", *sets,
                  f"train.engine={engine}", f"train.zero_stage={zero}")
        assert out.returncode == 0, out.stderr[-3000:]
    ref = metrics_rows(tiny(TINY, synth, tmp_path / "ddp0", *sets))
    for zero in (0, 2):
        rows = metrics_rows(tiny(TINY, synth, tmp_path / f"deepspeed{zero}", *sets,
                                 "train.engine=deepspeed", f"train.zero_stage={zero}"))
        for a, b in zip(rows, ref, strict=True):
            assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-5


@pytest.mark.slow
def test_num_workers_do_not_change_results(synth, tmp_path):
    """Each sample's random point order is seeded by (seed, epoch, index), not by the worker."""
    sets = ("schedule.epochs=1", "train.max_steps_per_epoch=3")
    cfgs = [tiny(TINY, synth, tmp_path / f"w{n}", *sets, f"data.num_workers={n}") for n in (0, 2)]
    records = [run(cfg) for cfg in cfgs]
    assert records[0]["run_id"] == records[1]["run_id"]
    (a,), (b,) = (metrics_rows(cfg) for cfg in cfgs)
    assert abs(float(a.pop("train_loss")) - float(b.pop("train_loss"))) < 1e-6 and a == b
