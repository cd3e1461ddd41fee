"""The harness against a real SLURM: smoke.yaml as a job array, idempotent resubmission,
a preempted run that resumes from its checkpoint, records equal to the local executor's."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO
from slurm_support import PROFILE
from test_harness_executors import comparable, ensure_smoke_data, records, submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def slurm_submit(tmp_path, *args):
    return submit("--executor", "slurm", "--profile", str(PROFILE), *args,
                  runs=tmp_path / "runs", logs=tmp_path / "logs")


def test_smoke_matrix_on_slurm(slurm_env, tmp_path):
    ensure_smoke_data()
    only = ["--only", "backbone=point_mae"]   # a 2-task array; every backbone runs in the demo
    out = slurm_submit(tmp_path, *only, "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    got = records(tmp_path / "runs")
    assert len(got) == 2 and all(r["status"] == "done" for r in got.values())  # full + Point-PEFT
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/job.json")]
    assert all(j["executor"] == "slurm" and "_" in j["job_id"] for j in jobs)  # one array

    # tables show them, apart from the paper's numbers (synthetic data: not comparable)
    tables = subprocess.run([sys.executable, "run_all.py", "tables", "--runs", str(tmp_path / "runs"),
                             "--out", str(tmp_path / "out"), "--no-readme", "--no-plots"],
                            cwd=REPO, capture_output=True, text=True)
    assert tables.returncode == 0, tables.stderr
    text = (tmp_path / "out" / "tables.md").read_text()
    assert "Not comparable to the paper" in text and "synthetic data" in text and "(n=1)" in text

    # a second submit submits nothing
    again = slurm_submit(tmp_path, *only)
    assert again.returncode == 0 and "2 runs, 0 to submit" in again.stdout

    # same records as the local executor (same code path, same metrics on CPU) on as many threads
    # as the SLURM job computes with (its cpus_per_task; float sums depend on the thread count)
    threads = str(yaml.safe_load(PROFILE.read_text())["cpus_per_task"])
    local = submit("--executor", "local", "--only", "backbone=point_mae,method=full", runs=tmp_path / "local",
                   logs=tmp_path / "l", env={"OMP_NUM_THREADS": threads})
    assert local.returncode == 0, local.stderr
    assert len(records(tmp_path / "local")) == 1
    for rid, rec in records(tmp_path / "local").items():
        assert comparable(rec) == comparable(got[rid])


def test_preempted_run_resumes_from_its_checkpoint(slurm_env, tmp_path):
    ensure_smoke_data()
    args = ["--only", "backbone=point_mae,method=full"]
    out = slurm_submit(tmp_path, *args)  # no --wait: returns once the array is queued
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    job = json.loads((run_dir / "job.json").read_text())
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoint.pt").is_file():  # wait for the first epoch's checkpoint
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.5)
    # preemption as SLURM signals it: USR2 -> submitit checkpoints and requeues the job
    subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True, timeout=30)
    deadline = time.monotonic() + 400
    while not (run_dir / "result.json").is_file():
        assert time.monotonic() < deadline, "the requeued run did not finish"
        time.sleep(1)
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "done"
    # resumed_from_epoch = the last epoch the checkpoint held (0 = after the first epoch)
    assert record.get("resumed_from_epoch") is not None, "the run restarted from scratch instead of resuming"
    assert record["epochs"] == record["config"]["schedule"]["epochs"]
    log = "".join(p.read_text() for p in (tmp_path / "logs").glob("*_log.err"))
    assert "Requeued" in log or "requeue" in log.lower()
