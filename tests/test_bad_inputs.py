"""Bad inputs and faults, command by command: each is one line on stderr naming the file, key
or value, a non-zero exit, and nothing written or lost. Values that would reach the sbatch
script are refused before any script exists (no line of the script comes from them).

Commands run in-process through ``harness.cli.main`` (fast); faults of the scheduler use fake
``sbatch`` scripts on PATH.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import REPO
from harness import checkpointing, runlock, tempfiles
from harness.cli import INTERRUPTED, main
from harness.data.synthetic import write_synthetic
from models import ops

TINY = REPO / "experiments" / "tiny.yaml"
OFFICIAL = REPO / "experiments" / "recipes" / "official.yaml"
PAYLOAD = "touch /tmp/ppb-pwned"


# ----------------------------------------------------------------------------- helpers

def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder with its content (to assert nothing was written or lost)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scan_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scan")
    return write_synthetic("scanobjectnn_obj_only", root, 16, 8, 0, 5)


def h5_copy(scan_root: Path, dest: Path, edit) -> Path:
    """A copy of the synthetic OBJ_ONLY folder whose train file is changed by edit(h5 file)."""
    import shutil

    shutil.copytree(scan_root, dest)
    with h5py.File(dest / "main_split_nobg" / "training_objectdataset.h5", "r+") as f:
        edit(f)
    return dest


# ----------------------------------------------------------------------------- shell injection

GOOD_PROFILE = {"partition": "gpu", "account": "proj_1", "qos": None, "constraint": "a100|h100",
                "gpus_per_node": 1, "cpus_per_task": 2, "mem_gb": 4, "timeout_min": 60,
                "array_parallelism": 2, "max_array_size": 100, "setup": ["module load cuda"],
                "additional_parameters": {"mail_type": "FAIL"}}


def experiment(tmp_path: Path, name="hard", **extra) -> Path:
    exp = {"name": name, "base": str(OFFICIAL),
           "axes": {"backbone": ["point_mae"], "method": ["full"], "dataset": ["scanobjectnn_obj_bg"],
                    "seed": [0, 1]},
           "set": {"data.root": "data/none", "data.npoints": 128, "data.point_all": 128,
                   "model.backbone_options": {"num_group": 16, "group_size": 16, "trans_dim": 96,
                                              "depth": 2, "num_heads": 4, "encoder_dims": 96}}}
    exp.update(extra)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def profile(tmp_path: Path, **changes) -> Path:
    data = {**GOOD_PROFILE, **changes}
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def dry_run(capsys, tmp_path, prof, exp=None):
    exp = exp or experiment(tmp_path)
    return run_cli(capsys, "submit", exp, "--executor", "slurm", "--profile", prof, "--dry-run",
                   "--runs-dir", tmp_path / "runs", "--logs", tmp_path / "logs")


INJECTIONS = [  # (profile change, the key the error must name)
    ({"partition": f"gpu\n{PAYLOAD}"}, "partition"),
    ({"partition": ["a", "b"]}, "partition"),
    ({"partition": "gpu; id"}, "partition"),
    ({"partition": None}, "partition"),
    ({"account": f"proj\n{PAYLOAD}"}, "account"),
    ({"account": "$(id)"}, "account"),
    ({"qos": f"normal\n{PAYLOAD}"}, "qos"),
    ({"qos": {"a": 1}}, "qos"),
    ({"constraint": f"a100\n{PAYLOAD}"}, "constraint"),
    ({"constraint": "a100 && id"}, "constraint"),
    ({"additional_parameters": {f"mail_type\n{PAYLOAD}": "FAIL"}}, "additional_parameters key"),
    ({"additional_parameters": {"Mail-Type": "FAIL"}}, "additional_parameters key"),
    ({"additional_parameters": {"mail_type": f"FAIL\n{PAYLOAD}"}}, "additional_parameters.mail_type"),
    ({"additional_parameters": {"exclude": ["n1", "n2"]}}, "additional_parameters.exclude"),
    ({"additional_parameters": "mail_type=FAIL"}, "additional_parameters"),
    ({"setup": {"a": 1}}, "setup"),
    ({"setup": "module load cuda"}, "setup"),
    ({"setup": ["module load cuda", f"echo hi\n{PAYLOAD}"]}, "setup[1]"),
    ({"setup": ["ok", 42]}, "setup"),
    ({"mem_gb": "lots"}, "mem_gb"),
    ({"mem_gb": -1}, "mem_gb"),
    ({"gpus_per_node": "2"}, "gpus_per_node"),
    ({"cpus_per_task": True}, "cpus_per_task"),
    ({"timeout_min": 1.5}, "timeout_min"),
    ({"timeout_min": 0}, "timeout_min"),
    ({"max_array_size": 0}, "max_array_size"),
    ({"bogus_key": 1}, "bogus_key"),
]


@pytest.mark.parametrize("change,key", INJECTIONS, ids=[k + str(i) for i, (_, k) in enumerate(INJECTIONS)])
def test_profile_value_refused(capsys, tmp_path, change, key):
    prof = profile(tmp_path, **change)
    rc, out, err = dry_run(capsys, tmp_path, prof)
    assert rc == 2
    one_error_line(err, str(prof), key)
    assert "#SBATCH" not in out and PAYLOAD not in out   # no script, no line from the value
    assert not (tmp_path / "runs").exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("name", [f"hard\n{PAYLOAD}", "../escape", "a b", "", 42, "$(id)"])
def test_experiment_name_refused(capsys, tmp_path, name):
    exp = experiment(tmp_path, name=name)
    rc, out, err = dry_run(capsys, tmp_path, profile(tmp_path), exp)
    assert rc == 2
    one_error_line(err, str(exp), "name")
    assert "#SBATCH" not in out and PAYLOAD not in out


def test_good_profile_script_has_values_only_on_sbatch_lines(capsys, tmp_path):
    rc, out, err = dry_run(capsys, tmp_path, profile(tmp_path))
    assert rc == 0, err
    script = out[out.index("#!/bin/bash"):]
    for value in ("gpu", "proj_1", "a100|h100", "FAIL"):
        lines = [ln for ln in script.splitlines() if value in ln]
        assert lines and all(ln.startswith("#SBATCH --") for ln in lines), (value, lines)
    assert "\nmodule load cuda\n" in script      # setup: the one place for shell lines


def test_dry_run_needs_neither_sbatch_nor_srun(capsys, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    rc, out, err = dry_run(capsys, tmp_path, profile(tmp_path))
    assert rc == 0, err
    assert "#SBATCH --array=0-1%2" in out


def test_dry_run_splits_into_arrays_of_max_array_size(capsys, tmp_path):
    rc, out, _ = dry_run(capsys, tmp_path, profile(tmp_path, max_array_size=1))
    assert rc == 0
    assert "2 job array(s) of 1, 1 job(s)" in out and "#SBATCH --array=0-0%" in out


# ----------------------------------------------------------------------------- experiment files

EXPERIMENT_FAULTS = [  # (changes, words of the error)
    ({"base": 42}, "'base'"),
    ({"set": ["data.npoints", 128]}, "'set'"),
    ({"rules": [{"when": {"seed": 0}, "set": ["train.seed", 1]}]}, "rules[0].set"),
    ({"rules": {"when": {}, "set": {}}}, "'rules'"),
    ({"axes": {"backbone": ["point_mae"], "method": ["full"], "dataset": ["scanobjectnn_obj_bg"],
               "variant": ["aug"]}, "variants": {"aug": ["train.augmentation", "none"]}}, "variants.aug"),
    ({"axes": {"seed": [[0, 1]]}}, "axes.seed"),
    ({"variants": ["plain"]}, "'variants'"),
    ({"set": {"model.backbone_options": {"num_heads": "five"}}}, "num_heads"),
]


@pytest.mark.parametrize("command", ["submit", "status"])
@pytest.mark.parametrize("changes,words", EXPERIMENT_FAULTS, ids=[w for _, w in EXPERIMENT_FAULTS])
def test_experiment_file_fault(capsys, tmp_path, command, changes, words):
    exp = experiment(tmp_path, **changes)
    rc, out, err = run_cli(capsys, command, exp, "--runs-dir", tmp_path / "runs")
    assert rc == 2
    one_error_line(err, words)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,words", [
    (["--seeds", "4-0"], "'4-0' is empty"),
    (["--seeds", "a-b"], "--seeds"),
    (["--only", "colour=red"], "colour"),
    (["--only", "seed=9"], "seed=9"),
    (["--parallel", "0"], "--parallel must be at least 1, got 0"),
    (["--parallel", "-1"], "--parallel must be at least 1, got -1"),
    (["--executor", "slurm"], "--profile"),
])
def test_submit_option_fault(capsys, tmp_path, args, words):
    rc, out, err = run_cli(capsys, "submit", experiment(tmp_path), "--runs-dir", tmp_path / "runs",
                           "--dry-run", *args)
    assert rc == 2
    one_error_line(err, words)


# ----------------------------------------------------------------------------- train

def train_args(scan_root, runs, *sets, config=TINY):
    return ["train", config, "--runs-dir", runs, "--set", f"data.root={scan_root}",
            "schedule.epochs=1", "train.max_steps_per_epoch=1", *sets]


TRAIN_FAULTS = [  # (--set items or extra args, words of the error)
    (["model.backbone_options.num_group=999"], "num_group: 999 groups need at least 999 input points"),
    (["model.backbone_options.group_size=200"], "group_size: 200 neighbours"),
    (["model.backbone_options.depth=0"], "depth: must be >= 1"),
    (["model.backbone_options.num_heads=5"], "num_heads: 5 does not divide"),
    (["model.backbone_options.num_heads=five"], "num_heads: expected a int, got 'five'"),
    (["model.backbone_options.trans_dim=[96, 96]"], "trans_dim: expected a int"),
    (["model.backbone_options.colour=1"], "colour"),
    (["optim.lr=[0.1]"], "optim.lr"),
    (["data.npoints=-5"], "data.npoints"),
    (["schedule.epochs=0"], "schedule.epochs"),
    (["data.npoints=4096", "data.point_all=4096"], "data.npoints: 4096 is more than the 2048"),
    (["model.backbone=point_m2ae", "model.backbone_options={num_groups: [64, 32], group_sizes: [8, 8, 8], "
      "encoder_dims: [48, 96, 96], depths: [1, 1, 1], num_heads: 4}"], "num_groups"),
]


@pytest.mark.parametrize("sets,words", TRAIN_FAULTS, ids=[w[:30] for _, w in TRAIN_FAULTS])
def test_train_config_fault_exits_2_without_record(capsys, tmp_path, scan_root, sets, words):
    runs = tmp_path / "runs"
    rc, out, err = run_cli(capsys, *train_args(scan_root, runs, *sets))
    assert rc == 2
    one_error_line(err, words)
    assert tree(runs) == {}, "a config error must leave no run folder or failure record"


@pytest.mark.parametrize("device,words", [("bogus", "--device 'bogus': not a torch device"),
                                          ("cuda:99", "--device cuda:99"),
                                          ("cuda", "--device cuda")])
def test_train_bad_device(capsys, tmp_path, scan_root, device, words):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    runs = tmp_path / "runs"
    rc, out, err = run_cli(capsys, *train_args(scan_root, runs), "--device", device)
    assert rc == 2
    one_error_line(err, words)
    assert tree(runs) == {}


def test_train_data_root_is_a_file(capsys, tmp_path, scan_root):
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, out, err = run_cli(capsys, "train", TINY, "--runs-dir", tmp_path / "runs", "--set", f"data.root={afile}")
    assert rc == 2
    one_error_line(err, "data.root", str(afile))


def test_train_runs_dir_is_a_file(capsys, tmp_path, scan_root):
    afile = tmp_path / "runs"
    afile.write_text("keep me")
    rc, out, err = run_cli(capsys, *train_args(scan_root, afile))
    assert rc == 2
    one_error_line(err, "cannot create the run folder", "not a directory")
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize("edit,words", [
    (lambda f: f["data"].__setitem__((3, 5, 1), np.nan), "'data'[3]"),
    (lambda f: f["data"].__setitem__((7, 0, 0), np.inf), "'data'[7]"),
    (lambda f: (f.__delitem__("label"), f.create_group("label")), "'label' as a Group"),
], ids=["nan", "inf", "label-group"])
def test_train_bad_h5_exits_2_naming_file_and_sample(capsys, tmp_path, scan_root, edit, words):
    root = h5_copy(scan_root, tmp_path / "data", edit)
    runs = tmp_path / "runs"
    rc, out, err = run_cli(capsys, *train_args(root, runs))
    assert rc == 2
    one_error_line(err, "training_objectdataset.h5", words)
    assert tree(runs) == {}
    rc, out, err = run_cli(capsys, "data", "check", "--dataset", "scanobjectnn_obj_only", "--root", root,
                           "--no-expect-official-counts")
    assert rc == 1 and "training_objectdataset.h5" in out and words in out and "FAILED" in out


def test_train_while_another_process_holds_the_run(capsys, tmp_path, scan_root):
    import argparse

    from harness import config as run_config
    from harness.cli.train import _load   # the run folder the command would use

    runs = tmp_path / "runs"
    args = argparse.Namespace(config=TINY, overrides=[[str(a) for a in train_args(scan_root, runs)[5:]]],
                              runs_dir=runs)
    rdir = run_config.run_dir(_load(args))
    rdir.mkdir(parents=True)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (rdir / runlock.LOCK_NAME).write_text(json.dumps(
            {"host": socket.gethostname(), "pid": owner.pid, "pid_start": runlock._start_time(owner.pid)}))
        before = tree(runs)
        rc, out, err = run_cli(capsys, *train_args(scan_root, runs))
        assert rc == 2, err
        one_error_line(err, "already being trained by", f"pid {owner.pid}")
        assert tree(runs) == before
    finally:
        owner.kill()
        owner.wait()


def test_checkpoint_without_optimizer_state(capsys, tmp_path, scan_root):
    runs = tmp_path / "runs"
    rc, out, err = run_cli(capsys, *train_args(scan_root, runs, "schedule.epochs=2",
                                               "schedule.cosine_epochs=1"))
    assert rc == 0, err
    rdir = next(runs.iterdir())
    (rdir / "result.json").unlink()                      # pretend it stopped after epoch 0
    state = checkpointing.load(rdir / "checkpoint.pt")
    del state["optimizer"]
    checkpointing.save_atomic(state, rdir / "checkpoint.pt")
    before = tree(runs)
    rc, out, err = run_cli(capsys, *train_args(scan_root, runs, "schedule.epochs=2", "schedule.cosine_epochs=1"))
    assert rc == 2
    one_error_line(err, "checkpoint.pt", "lacks optimizer", f"rm {rdir / 'checkpoint.pt'}")
    assert tree(runs) == before


def test_interrupt_is_one_line(capsys, tmp_path, scan_root, monkeypatch):
    from harness import train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "run", interrupted)
    rc, out, err = run_cli(capsys, *train_args(scan_root, tmp_path / "runs"))
    assert rc == 130
    assert one_error_line(err) == INTERRUPTED


def test_full_disk_failure_record_says_no_space(capsys, tmp_path, scan_root, monkeypatch):
    real = tempfiles.mkstemp_for

    def full(path):
        fd, tmp = real(path)
        if Path(path).name == "checkpoint.pt":   # checkpoints land on a full disk
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, tmp
    monkeypatch.setattr(tempfiles, "mkstemp_for", full)
    runs = tmp_path / "runs"
    rc, out, err = run_cli(capsys, *train_args(scan_root, runs))
    assert rc == 1
    one_error_line(err, "no space left on device", "checkpoint.pt", "failure record")
    record = json.loads(next(runs.glob("*/result.json")).read_text())
    assert record["status"] == "failed" and record["error"]["message"].startswith("no space left on device")
    assert record["kernels"] == ops.kernels_used("cpu") and record["kernels"]["knn"] == "pytorch"
    assert not list(runs.glob("*/.*.tmp"))              # the half-written temp file is gone
    assert not list(runs.glob("*/run.lock"))


# ----------------------------------------------------------------------------- data check (ModelNet40)

@pytest.fixture(scope="module")
def mn40_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mn40")
    return write_synthetic("modelnet40", root, 1, 1, 0, 2)


def mn40_copy(mn40_root, dest) -> Path:
    import shutil

    shutil.copytree(mn40_root, dest)
    return dest


def write_dat(root: Path, split: str, points=None, labels=None):
    from harness.data import modelnet40

    _, files, expected = modelnet40.read_split(root, split)
    pts = points if points is not None else [np.zeros((8192, 6), np.float32) + 0.5 for _ in files]
    lab = labels if labels is not None else [np.array([c], np.int32) for c in expected]
    with open(modelnet40.cache_path(root, split), "wb") as f:
        pickle.dump([pts, lab], f)


def test_modelnet40_dat_with_nan(capsys, tmp_path, mn40_root):
    root = mn40_copy(mn40_root, tmp_path / "mn")
    pts = [np.zeros((8192, 6), np.float32) + 0.5 for _ in range(2)]
    pts[1][17, 2] = np.nan
    write_dat(root, "train", points=pts)
    rc, out, _ = run_cli(capsys, "data", "check", "--dataset", "modelnet40", "--root", root,
                         "--no-expect-official-counts")
    assert rc == 1 and "modelnet40_train_8192pts_fps.dat: found NaN or inf in sample 1" in out


def test_modelnet40_dat_with_empty_labels(capsys, tmp_path, mn40_root):
    root = mn40_copy(mn40_root, tmp_path / "mn")
    write_dat(root, "test", labels=[np.array([], np.int32), np.array([], np.int32)])
    rc, out, _ = run_cli(capsys, "data", "check", "--dataset", "modelnet40", "--root", root,
                         "--no-expect-official-counts")
    assert rc == 1 and "modelnet40_test_8192pts_fps.dat: found label array([], dtype=int32) for sample 0" in out


def test_modelnet40_txt_with_inf_deep_check(capsys, tmp_path, mn40_root):
    root = mn40_copy(mn40_root, tmp_path / "mn")
    shape = sorted(root.glob("*/*_0001.txt"))[0]
    lines = shape.read_text().splitlines()
    lines[4] = "inf,0,0,0,0,1"
    shape.write_text("\n".join(lines) + "\n")
    rc, out, _ = run_cli(capsys, "data", "check", "--dataset", "modelnet40", "--root", root,
                         "--no-expect-official-counts", "--deep")
    assert rc == 1 and f"{shape}:5: found NaN or inf on line 5" in out


def test_modelnet40_h5_with_nan(capsys, tmp_path):
    root = write_synthetic("modelnet40_h5", tmp_path / "h5", 1, 1, 0, 2)
    first = sorted(root.glob("ply_data_test*.h5"))[0]
    with h5py.File(first, "r+") as f:
        f["data"][0, 3, 0] = np.nan
    rc, out, _ = run_cli(capsys, "data", "check", "--dataset", "modelnet40_h5", "--root", root,
                         "--no-expect-official-counts")
    assert rc == 1 and f"{first}: found NaN or inf in 'data'[0]" in out


# ----------------------------------------------------------------------------- build-cache

@pytest.mark.parametrize("extra,words", [
    (["--npoints", "0"], "--npoints must be at least 1, got 0"),
    (["--npoints", "-3"], "--npoints must be at least 1, got -3"),
    (["--backbone-option", "num_heads=five"], "num_heads: expected a int, got 'five'"),
    (["--backbone-option", "num_group=5000"], "num_group: 5000 groups"),
    (["--backbone-option", "depth=0"], "depth: must be >= 1"),
    (["--backbone-option", "trans_dim=[1, 2]"], "trans_dim"),
    (["--backbone-option", "num_heads=[1"], "not valid YAML"),
    (["--device", "bogus"], "--device 'bogus'"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_build_cache_fault(capsys, tmp_path, scan_root, extra, words):
    out_file = tmp_path / "bank.pt"
    rc, out, err = run_cli(capsys, "build-cache", "--backbone", "point_mae", "--dataset", "scanobjectnn_obj_only",
                           "--root", scan_root, "--out", out_file, "--no-progress", *extra)
    assert rc == 2
    one_error_line(err, words)
    assert not out_file.exists()


# ----------------------------------------------------------------------------- the scheduler

def fake_sbatch(tmp_path: Path, body: str) -> Path:
    """A folder with an ``sbatch`` running ``body`` and an ``srun`` that does nothing (submitit
    builds no SLURM executor where ``srun`` is missing), so no real SLURM is needed."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    for name, text in (("sbatch", textwrap.dedent(body)), ("srun", "exit 0\n")):
        script = bindir / name
        script.write_text("#!/bin/sh\n" + text)
        script.chmod(0o755)
    return bindir


@pytest.mark.parametrize("message", [
    "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
    "sbatch: error: Batch job submission failed: Requested node configuration is not available",
    "sbatch: error: Batch job submission failed: Invalid job array specification",
])
def test_sbatch_refusal_is_one_line(capsys, tmp_path, monkeypatch, message):
    bindir = fake_sbatch(tmp_path, f'echo "{message}" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    runs = tmp_path / "runs"
    rc, out, err = run_cli(capsys, "submit", experiment(tmp_path), "--executor", "slurm", "--profile",
                           profile(tmp_path), "--runs-dir", runs, "--logs", tmp_path / "logs", "--no-preflight")
    assert rc == 2
    one_error_line(err, "the scheduler refused", message.split("failed: ")[1])
    assert not list(runs.glob("*/job.json"))


def test_no_sbatch_on_path(capsys, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    rc, out, err = run_cli(capsys, "submit", experiment(tmp_path), "--executor", "slurm", "--profile",
                           profile(tmp_path), "--runs-dir", tmp_path / "runs", "--no-preflight")
    assert rc == 2
    one_error_line(err, "sbatch not found on PATH")


def test_large_matrix_goes_out_as_several_arrays(capsys, tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    bindir = fake_sbatch(tmp_path, f"""\
        echo "call $(grep -h '^#SBATCH --array' "$1")" >> {calls}
        echo "Submitted batch job $(wc -l < {calls})"
        """)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    exp = experiment(tmp_path, axes={"backbone": ["point_mae"], "method": ["full"],
                                     "dataset": ["scanobjectnn_obj_bg"], "seed": [0, 1, 2, 3, 4]})
    rc, out, err = run_cli(capsys, "submit", exp, "--executor", "slurm", "--profile",
                           profile(tmp_path, max_array_size=2), "--runs-dir", tmp_path / "runs",
                           "--logs", tmp_path / "logs", "--no-preflight")
    assert rc == 0, err
    # 5 runs, at most 2 per array: 2 + 2 + 1 (submitit sends a lone job without --array)
    assert calls.read_text().splitlines() == ["call #SBATCH --array=0-1%2", "call #SBATCH --array=0-1%2", "call "]
    assert len(list((tmp_path / "runs").glob("*/job.json"))) == 5


# ----------------------------------------------------------------------------- locks, temp files, modes

def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / runlock.LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    assert runlock.holder(tmp_path) is None
    with runlock.RunLock(tmp_path, "r") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(runlock.RunLocked, match="already being trained"):
            runlock.RunLock(tmp_path, "r").acquire()
    assert not (tmp_path / runlock.LOCK_NAME).exists()


def test_submit_skips_a_run_locked_by_a_live_process(capsys, tmp_path):
    exp = experiment(tmp_path)
    rc, out, _ = run_cli(capsys, "submit", exp, "--runs-dir", tmp_path / "runs", "--dry-run")
    run_ids = [ln.split("|")[1].strip() for ln in out.splitlines() if ln.startswith("| point_mae")]
    locked = tmp_path / "runs" / run_ids[0]
    with runlock.RunLock(locked, run_ids[0]):
        rc, out, _ = run_cli(capsys, "submit", exp, "--runs-dir", tmp_path / "runs", "--dry-run")
    assert rc == 0 and f"skip (locked by pid {os.getpid()})" in out and "1 to submit" not in out.split("runs,")[0]


def test_dead_writers_temp_files_are_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".checkpoint.pt.{host}.{dead.pid}.abc123.tmp"
    live = tmp_path / f".checkpoint.pt.{host}.{os.getppid()}.def456.tmp"
    other = tmp_path / f".checkpoint.pt.otherhost.{dead.pid}.ghi789.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"half")
    checkpointing.save_atomic({"x": 1}, tmp_path / "checkpoint.pt")
    assert not stale.exists() and live.exists() and other.exists()


def test_shared_files_follow_the_umask(tmp_path, mn40_root):
    from harness.data import modelnet40
    from models.peft.point_peft.memory_bank import save_memory_bank

    import torch

    old = os.umask(0o022)
    try:
        checkpointing.save_atomic({"x": 1}, tmp_path / "a.pt")
        save_memory_bank(tmp_path / "bank.pt", {"bank": torch.zeros(4, 3), "meta": {}})
        root = mn40_copy(mn40_root, tmp_path / "mn")
        cache = modelnet40.build_cache(root, "test", npoints=64, progress=False)
    finally:
        os.umask(old)
    for path in (tmp_path / "a.pt", tmp_path / "bank.pt", cache):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_os_error_text_names_the_file():
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/checkpoint.pt")
    assert checkpointing.os_error_text(err) == "no space left on device: /runs/x/checkpoint.pt"


def test_every_declared_dependency_has_its_import_name():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    from harness.cli import DEPENDENCIES
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group().lower() for d in declared}  # the name before any version
    assert set(DEPENDENCIES.values()) == names


@pytest.mark.parametrize("command, module", [("bench", "torch"), ("tables", "pandas"), ("submit", "yaml")])
def test_a_dependency_missing_from_the_interpreter_is_one_line(command, module):
    """run_all.py under a Python without the project's packages (its venv not active) says so."""
    code = (f"import sys, runpy; sys.modules[{module!r}] = None; sys.argv = ['run_all.py', {command!r}, '--help']; "
            "runpy.run_path('run_all.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and f"(import {module}) is not installed for {sys.executable}" in proc.stderr


def test_an_undeclared_missing_module_is_not_called_a_missing_dependency():
    from harness.cli import missing_dependency_line
    assert missing_dependency_line(ModuleNotFoundError("x", name="pointnet2_ops")) is None
    assert "pyyaml" in missing_dependency_line(ModuleNotFoundError("x", name="yaml.cyaml"))
