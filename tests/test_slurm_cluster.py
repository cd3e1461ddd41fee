"""A real single-node SLURM cluster, driven by submitit the way the harness drives it.

The cluster is the session fixture ``slurm_env`` (conftest.py, helpers in slurm_support.py).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from slurm_support import PROFILE, STOP, wait_results, wait_state

pytestmark = pytest.mark.slurm


def probe(x: int) -> tuple[int, str | None, str | None]:
    """Runs inside the SLURM job: what a training run would see of its allocation."""
    return x * 2, os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("SLURM_ARRAY_TASK_ID")


def test_job_array_with_gpus_and_sacct(slurm_env, tmp_path):
    import cloudpickle
    import submitit

    # This module is not importable inside the job (tests/ is not on its sys.path): ship
    # its functions by value instead of by reference.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # The resources of slurm/profiles/local-test.yaml (partition debug, 1 GPU per run, arrays of 2).
    profile = yaml.safe_load(PROFILE.read_text())
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs")
    assert executor.cluster == "slurm"
    executor.update_parameters(slurm_partition=profile["partition"], gpus_per_node=profile["gpus_per_node"],
                               cpus_per_task=profile["cpus_per_task"], mem_gb=profile["mem_gb"],
                               timeout_min=profile["timeout_min"],
                               slurm_array_parallelism=profile["array_parallelism"])
    assert (profile["partition"], profile["gpus_per_node"], profile["array_parallelism"]) == ("debug", 1, 2)
    jobs = executor.map_array(probe, [1, 2])
    assert len(jobs) == 2

    results = wait_results(jobs, timeout_s=60)
    assert [value for value, _, _ in results] == [2, 4]
    assert sorted(task for _, _, task in results) == ["0", "1"]
    for _, cuda_visible, _ in results:
        assert cuda_visible in {"0", "1"}, f"CUDA_VISIBLE_DEVICES in job: {cuda_visible!r}"

    # Job states come from sacct, i.e. from slurmdbd: without it they stay UNKNOWN.
    for job in jobs:
        assert wait_state(job, "COMPLETED", timeout_s=30) == "COMPLETED"
    array_id = jobs[0].job_id.split("_")[0]
    sacct = subprocess.run(["sacct", "-n", "-X", "--parsable2", "-o", "JobID,State", "-j", array_id],
                           capture_output=True, text=True, timeout=30)
    assert sacct.returncode == 0, sacct.stderr
    assert sorted(sacct.stdout.split()) == [f"{array_id}_0|COMPLETED", f"{array_id}_1|COMPLETED"]


def test_stop_is_safe_when_nothing_runs(tmp_path):
    """stop_cluster.sh succeeds on an empty or stale dir and never kills a reused pid."""
    assert subprocess.run(["bash", str(STOP), str(tmp_path / "never-started")], timeout=30).returncode == 0
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "slurmctld").write_text(str(os.getpid()))  # our pid, not a slurmctld
    (tmp_path / "pids" / "munged").write_text("999999999")            # a pid that does not exist
    proc = subprocess.run(["bash", str(STOP), str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert not list((tmp_path / "pids").iterdir())

