"""slurm/daemons.sh, the daemon bookkeeping of start_cluster.sh / stop_cluster.sh (no cluster, no root).

A launcher that execs late stands for a loaded machine: until setsid (and setpriv for munged)
exec the daemon, /proc/PID/comm names the launcher, and start_cluster.sh checking in that window
once failed CI with "slurmctld exited while waiting for slurmctld to answer" while slurmctld ran.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DAEMONS = Path(__file__).resolve().parents[1] / "slurm" / "daemons.sh"


def run_with_slow_setsid(tmp_path: Path, delay_s: float, script: str, timeout_s: int = 60) -> subprocess.CompletedProcess:
    """Run ``script`` (bash, daemons.sh sourced, DIR=tmp_path) with a setsid that execs after ``delay_s``."""
    real_setsid = shutil.which("setsid")
    if real_setsid is None:
        pytest.skip("no setsid on this machine")
    slow = tmp_path / "bin" / "setsid"
    slow.parent.mkdir()
    slow.write_text(f'#!/bin/bash\nsleep {delay_s}\nexec {real_setsid} "$@"\n')
    slow.chmod(0o755)
    (tmp_path / "log").mkdir()
    (tmp_path / "pids").mkdir()
    return subprocess.run(["bash", "-c", f"DIR={tmp_path}; . {DAEMONS}\n{script}"], capture_output=True,
                          text=True, timeout=timeout_s,
                          env={**os.environ, "PATH": f"{slow.parent}:{os.environ['PATH']}"})


def test_spawn_returns_once_the_daemon_runs(tmp_path):
    """A late exec does not make a starting daemon look dead; one that dies first counts as dead
    and spawn does not hang on it."""
    proc = run_with_slow_setsid(tmp_path, 1, 'spawn sleep sleep 60; if alive sleep; then echo alive; fi\n'
                                             'spawn gone false; if ! alive gone; then echo gone; fi\n'
                                             'kill "$(cat "$DIR/pids/sleep")"\n')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["alive", "gone"]


def test_a_launcher_that_never_execs_in_time_is_stopped(tmp_path):
    """Past the start timeout spawn stops the launcher (else the daemon would start later, with no
    recorded pid for stop_cluster.sh) and says so; the daemon counts as dead."""
    marker = tmp_path / "started"
    proc = run_with_slow_setsid(tmp_path, 3, f'TIMEOUT=1; spawn touch touch {marker}\n'
                                             'if ! alive touch; then echo dead; fi\nsleep 3\n')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["dead"]
    assert "touch: its launcher did not exec it within 1 s; stopped it" in proc.stderr
    assert not marker.exists()  # the launcher never got to run the daemon
