"""A real single-node SLURM cluster, driven by submitit the way the harness drives it.

``slurm_cluster()`` (start, export SLURM_CONF, always stop) and the module fixture
``slurm_env`` are meant for reuse by other SLURM tests: import them from here, or move them to
``conftest.py``. The cluster comes from ``slurm/start_cluster.sh``; exit code 3 from it
(not root, no apt, packages not installable) becomes a skip, any other failure an error.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
START = REPO / "slurm" / "start_cluster.sh"
STOP = REPO / "slurm" / "stop_cluster.sh"
PROFILE = REPO / "slurm" / "profiles" / "local-test.yaml"
PREREQUISITE_MISSING = 3  # start_cluster.sh's exit code for "cannot run here"

pytestmark = pytest.mark.slurm


class ClusterUnavailable(Exception):
    """This machine cannot run the test cluster (a reason to skip, not a failure)."""


def _exports(stdout: str) -> dict[str, str]:
    """Parse the ``export NAME=VALUE`` lines that start_cluster.sh prints."""
    env = {}
    for line in stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export "):].split("=", 1)
            env[name] = value
    return env


@contextlib.contextmanager
def slurm_cluster(directory: Path, *args: str, start_timeout_s: float = 600) -> Iterator[dict[str, str]]:
    """Start a cluster in ``directory``, put its SLURM_CONF in os.environ, always stop it.

    Yields the exported variables (SLURM_CONF, SLURM_CLUSTER_DIR). ``args`` go to
    start_cluster.sh (e.g. "--cpus", "16", "--gpus", "4"). Raises ClusterUnavailable when
    the machine cannot run it, RuntimeError (with the script's log tails) when it fails.
    """
    if os.geteuid() != 0:
        raise ClusterUnavailable("the SLURM test cluster needs root (daemons, mknod, apt-get)")
    try:
        proc = subprocess.run(["bash", str(START), *args, str(directory)],
                              capture_output=True, text=True, timeout=start_timeout_s)
        if proc.returncode == PREREQUISITE_MISSING:
            reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "unknown reason"
            raise ClusterUnavailable(reason)
        if proc.returncode != 0:
            raise RuntimeError(f"start_cluster.sh failed (exit {proc.returncode}):\n{proc.stderr}")
        env = _exports(proc.stdout)
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    finally:
        subprocess.run(["bash", str(STOP), str(directory)], capture_output=True, timeout=180)


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """One cluster per test module; skipped (with the reason) where it cannot run."""
    pytest.importorskip("submitit")
    try:
        cluster = slurm_cluster(tmp_path_factory.mktemp("slurm"))
        env = cluster.__enter__()
    except ClusterUnavailable as err:
        pytest.skip(f"no SLURM test cluster: {err}")
    try:
        yield env
    finally:
        cluster.__exit__(None, None, None)


def wait_results(jobs, timeout_s: float) -> list:
    """result() of every job, but fail (and cancel) instead of hanging past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not all(job.done() for job in jobs):
        if time.monotonic() > deadline:
            states = {job.job_id: job.state for job in jobs}
            for job in jobs:
                job.cancel(check=False)
            raise TimeoutError(f"SLURM jobs not done after {timeout_s}s: {states}")
        time.sleep(0.25)
    return [job.result() for job in jobs]


def wait_state(job, wanted: str, timeout_s: float) -> str:
    """Poll ``job.state`` (read through sacct) until it is ``wanted`` or time runs out."""
    deadline = time.monotonic() + timeout_s
    while job.state != wanted and time.monotonic() < deadline:
        time.sleep(0.5)
    return job.state


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
