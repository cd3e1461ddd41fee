"""A real single-node SLURM test cluster for the tests (slurm/start_cluster.sh), always stopped.

``slurm_cluster()`` starts one in a folder, exports its SLURM_CONF and stops it on exit; the
session fixture ``slurm_env`` in conftest.py shares one cluster among all SLURM tests
(start_cluster.sh moves to a free block of ports when 6817.. is taken, so a cluster someone
else runs does not make the tests fail). Exit code 3 of start_cluster.sh (not
root, no apt, packages not installable) becomes a skip, any other failure an error.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
START = REPO / "slurm" / "start_cluster.sh"
STOP = REPO / "slurm" / "stop_cluster.sh"
PROFILE = REPO / "slurm" / "profiles" / "local-test.yaml"
PREREQUISITE_MISSING = 3  # start_cluster.sh's exit code for "cannot run here"


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
