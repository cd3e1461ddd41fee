"""A per-run lock: one process trains a run folder at a time.

Two ``submit`` commands on one matrix (or a ``train`` next to a running job) would otherwise
train the same run twice at once, each overwriting the other's checkpoint. ``run.lock`` in the
run folder is created atomically (a complete temp file hard-linked into place, which fails when
the lock exists) and holds its owner: host, pid, the
process's start time (so a reused pid is not mistaken for the owner) and the SLURM job id.

A lock is stale, and is taken over, when its owner is gone: on the same host the pid is dead
or belongs to another process; on another host the recorded SLURM job is no longer in
``squeue``. A lock whose owner cannot be checked (another host, no SLURM) is respected.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from models.errors import BenchError

LOCK_NAME = "run.lock"


class RunLocked(BenchError):
    """The run is being trained by another live process."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _job_id() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def owner() -> dict:
    """Who this process is, as written into a lock file."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _start_time(pid), "job_id": _job_id(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(info: dict) -> bool:
    """Is the owner recorded in a lock still running?"""
    if info.get("host") == socket.gethostname():
        pid = info.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return False
        start = _start_time(pid)
        return start is not None and (info.get("pid_start") in (None, start))
    job = info.get("job_id")
    if job and shutil.which("squeue"):
        try:
            proc = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True,
                                  text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return True
        if proc.returncode == 0:
            return bool(proc.stdout.strip())
    return True   # another host and no way to ask: respect the lock


def holder(rdir: Path) -> dict | None:
    """The live owner of ``rdir``'s lock, or None (no lock, or a stale one)."""
    info = _read(Path(rdir) / LOCK_NAME)
    if info is None:
        return None
    return info if _alive(info) else None


def describe(info: dict) -> str:
    job = f", job {info['job_id']}" if info.get("job_id") else ""
    return f"pid {info.get('pid')} on {info.get('host')}{job} since {info.get('since')}"


class RunLock:
    """``with RunLock(rdir):`` hold ``rdir/run.lock`` for the block; RunLocked if taken."""

    def __init__(self, rdir: Path, run_id: str = ""):
        self.path = Path(rdir) / LOCK_NAME
        self.run_id = run_id or Path(rdir).name
        self.me = owner()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the owner is written to a temp file first and hard-linked into place: the lock file
        # appears whole or not at all
        tmp = self.path.with_name(f".{LOCK_NAME}.{self.me['host']}.{self.me['pid']}.tmp")
        tmp.write_text(json.dumps(self.me))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    return
                except FileExistsError:
                    info = _read(self.path)
                    if info is not None and _alive(info):
                        raise RunLocked(f"run {self.run_id} is already being trained by {describe(info)} "
                                        f"(lock {self.path}); not starting it twice: wait for it, or delete "
                                        "the lock if that process is gone") from None
                    try:   # stale: its owner is gone
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
        finally:
            tmp.unlink(missing_ok=True)
        raise RunLocked(f"run {self.run_id}: could not take the lock {self.path} (contended)")

    def release(self) -> None:
        info = _read(self.path)
        if info is not None and info.get("pid") == self.me["pid"] and info.get("host") == self.me["host"]:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
