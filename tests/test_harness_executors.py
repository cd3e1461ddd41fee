"""The local and debug executors run the same code path and give the same records."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from harness.data.synthetic import write_synthetic

SMOKE_DATA = REPO / "data" / "synthetic" / "scanobjectnn_obj_bg"


def ensure_smoke_data() -> None:
    """The synthetic data experiments/smoke.yaml reads (what `run_all.py demo` writes); written
    once, under a file lock, so parallel test workers never read a half-written set."""
    SMOKE_DATA.parent.mkdir(parents=True, exist_ok=True)
    with open(SMOKE_DATA.parent / ".smoke-data.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not SMOKE_DATA.is_dir():
            write_synthetic("scanobjectnn_obj_bg", SMOKE_DATA, num_classes=5, train_per_class=16,
                            test_per_class=8, seed=0)


def submit(*args, runs, logs, env=None):
    return subprocess.run([sys.executable, "run_all.py", "submit", "experiments/smoke.yaml", *args,
                           "--runs-dir", str(runs), "--logs", str(logs)],
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=None if env is None else {**os.environ, **env})


def records(runs):
    out = {}
    for path in sorted(runs.glob("*/result.json")):
        rec = json.loads(path.read_text())
        out[rec["run_id"]] = rec
    return out


def comparable(rec):
    return {k: rec[k] for k in ("run_id", "status", "metrics", "params", "epochs", "config_hash", "world_size")}


@pytest.mark.slow
def test_local_and_debug_executors_give_identical_records(tmp_path):
    ensure_smoke_data()
    only = ["--only", "backbone=point_mae,method=full"]   # one run: the same code path for every run
    local = submit("--executor", "local", *only, runs=tmp_path / "local", logs=tmp_path / "l")
    assert local.returncode == 0, local.stdout + local.stderr
    debug = submit("--executor", "debug", *only, runs=tmp_path / "debug", logs=tmp_path / "d")
    assert debug.returncode == 0, debug.stdout + debug.stderr
    a, b = records(tmp_path / "local"), records(tmp_path / "debug")
    assert a and set(a) == set(b)
    for rid in a:
        assert comparable(a[rid]) == comparable(b[rid])
    # idempotent: nothing left to submit
    again = submit("--executor", "local", *only, runs=tmp_path / "local", logs=tmp_path / "l")
    assert "0 to submit" in again.stdout and "skip (done)" in again.stdout
