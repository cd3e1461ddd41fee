"""A job that dies before its run writes a record: `status` shows it failed, with the
scheduler's state, the path of its submitit log and the log's last lines; `tables` counts it
failed. Local executor (the run kills itself with SIGKILL after its first epoch) and the real
SLURM test cluster (the scheduler kills the running job)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from harness import jobs
from harness.train import KILL_ENV, PAUSE_ENV
from test_harness_executors import ensure_smoke_data

ONLY = ("--only", "backbone=point_mae,method=full")


def run_all(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_all.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


def the_run(runs: Path) -> tuple[Path, dict]:
    (rdir,) = list(runs.iterdir())
    return rdir, json.loads((rdir / "job.json").read_text())


def check_died(tmp_path: Path, runs: Path, logs: Path, state: str, stream: str, last_says: str | None) -> None:
    """status and tables on a run folder whose job ended (``state``) without a record; the log
    shown is the job's ``stream`` log, whose last line contains ``last_says``."""
    rdir, job = the_run(runs)
    assert not (rdir / "result.json").exists()
    log = jobs.log_path(job, stream)
    assert log.parent == logs and log.is_file()
    last = [ln.rstrip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1]
    assert last_says is None or last_says in last

    status = run_all("status", "experiments/smoke.yaml", *ONLY, "--runs-dir", runs, "--logs", logs)
    assert status.returncode == 1, status.stdout + status.stderr
    row = next(ln for ln in status.stdout.splitlines() if rdir.name in ln and "|" in ln)
    assert "failed" in row and f"died without a record: scheduler {state} (job {job['job_id']})" in row
    assert f"log {log}" in status.stdout and f"    {last}" in status.stdout     # path and tail
    assert "1 failed" in status.stdout and f"job logs: {logs}/" in status.stdout

    tables = run_all("tables", "--runs", runs, "--out", tmp_path / "out", "--no-plots")
    assert tables.returncode == 0, tables.stderr
    assert "0 done runs in 0 setups, 1 failed" in tables.stdout
    md = (tmp_path / "out" / "tables.md").read_text()
    assert "Failed runs (not counted above)" in md and f"job {job['job_id']} ended ({state}) without a record" in md


@pytest.mark.slow
def test_local_job_killed_before_its_record_shows_failed_with_its_log(tmp_path):
    ensure_smoke_data()
    runs, logs = tmp_path / "runs", tmp_path / "logs"
    out = run_all("submit", "experiments/smoke.yaml", *ONLY, "--executor", "local", "--runs-dir", runs,
                  "--logs", logs, env={KILL_ENV: "0", "OMP_NUM_THREADS": "1"})   # SIGKILL after epoch 0
    assert out.returncode == 1, out.stdout + out.stderr        # submit waits, then prints the status
    assert "died without a record" in out.stdout
    # SIGKILL leaves stderr empty: the stdout log's last progress line shows how far it got
    assert jobs.log_tail(jobs.log_path(the_run(runs)[1])) == []
    check_died(tmp_path, runs, logs, "FINISHED", "stdout", "epoch 0,")


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_job_killed_before_its_record_shows_failed_with_its_log(slurm_env, tmp_path):
    from slurm_support import PROFILE

    ensure_smoke_data()
    runs, logs = tmp_path / "runs", tmp_path / "logs"
    out = run_all("submit", "experiments/smoke.yaml", *ONLY, "--executor", "slurm", "--profile", PROFILE,
                  "--runs-dir", runs, "--logs", logs,      # no --wait: returns once the job is queued
                  env={PAUSE_ENV: "0"})  # the job pauses after epoch 0, so the kill lands mid-run
    assert out.returncode == 0, out.stdout + out.stderr
    rdir, job = the_run(runs)
    deadline = time.monotonic() + 300
    while not (rdir / "checkpoint.pt").is_file():          # it is running: epoch 0 is done
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)
    # killed by the scheduler (as for a node failure or the OOM killer): every process at once,
    # so the run cannot write a record (plain scancel's SIGTERM leaves it 30 s to finish)
    subprocess.run(["scancel", "--signal=KILL", "--full", job["job_id"]], check=True, timeout=30)
    deadline = time.monotonic() + 120
    while jobs.is_alive(jobs.slurm_states([job["job_id"]]).get(job["job_id"])):
        assert time.monotonic() < deadline, "the killed job is still alive"
        time.sleep(0.5)
    state = jobs.slurm_states([job["job_id"]])[job["job_id"]]
    assert state in ("CANCELLED", "FAILED"), state
    check_died(tmp_path, runs, logs, state, "stderr", None)
