"""Submitted jobs: their scheduler state (asked in batches) and where their logs are.

``submit`` writes ``<run dir>/job.json`` (executor, job id, log folder and the run's identity);
``status`` and ``tables`` read it back to ask the scheduler about many jobs at once:

* SLURM: one ``squeue -t all`` (the controller's live view: a cancelled job shows CANCELLED at
  once, not PENDING until the accounting database catches up), then one ``sacct`` call per
  1,000 jobs the controller no longer holds. Never one call per job (cluster RPC limits).
* local: the job id is the process id; the process is alive or it is finished.

A job that finished without its run writing a result record died (killed, out of memory,
data missing on the node ...): its submitit log (``<folder>/<job id>_0_log.err``) says why.
"""
from __future__ import annotations

import getpass
import shutil
import subprocess
from pathlib import Path

ALIVE = ("PENDING", "REQUEUED", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING",
         "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT")
SACCT_BATCH = 1000


def _parse_ids(job_id: str) -> list[str]:
    """'12_[3-5,7%2]' -> ['12_3', '12_4', '12_5', '12_7']; '12_3' / '12' unchanged."""
    if "_[" not in job_id:
        return [job_id]
    base, _, spec = job_id.partition("_[")
    out = []
    for part in spec.rstrip("]").split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (hi.isdigit() or not hi):
            out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _table(command: list[str], timeout_s: float = 60) -> dict[str, str]:
    """Run squeue/sacct printing 'JobID|State' lines; {job id: state} (empty on failure)."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return {}
    if proc.returncode != 0:
        return {}
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if not job or "." in job or not state:
            continue
        for jid in _parse_ids(job):
            states[jid] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """State of each SLURM job id (array tasks as '12_3'): squeue first, then sacct in batches."""
    wanted = set(job_ids)
    states: dict[str, str] = {}
    if shutil.which("squeue"):
        live = _table(["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T"])
        states.update({j: s for j, s in live.items() if j in wanted})
    rest = sorted({j.split("_")[0] for j in wanted - set(states)})
    if rest and shutil.which("sacct"):
        for i in range(0, len(rest), SACCT_BATCH):
            chunk = rest[i:i + SACCT_BATCH]
            got = _table(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(chunk)])
            for jid, state in got.items():
                if jid in wanted and jid not in states:
                    # the controller no longer holds it, so it is not really pending / running
                    states[jid] = "UNKNOWN" if state in ALIVE else state
    return states


def local_state(job_id: str) -> str:
    """RUNNING while the submitit process with this pid lives, else FINISHED."""
    try:
        cmdline = Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
    except (ValueError, OSError):
        return "FINISHED"
    return "RUNNING" if b"submitit" in cmdline else "FINISHED"


def scheduler_states(infos: list[dict]) -> dict[str, str]:
    """{job id: state} for job.json contents (SLURM state names; local RUNNING / FINISHED);
    jobs the scheduler cannot tell about are left out."""
    slurm = [str(i["job_id"]) for i in infos if i.get("executor") == "slurm"]
    states = slurm_states(slurm) if slurm else {}
    for info in infos:
        if info.get("executor") == "local":
            states[str(info["job_id"])] = local_state(str(info["job_id"]))
    return states


def is_alive(state: str | None) -> bool:
    return state in ALIVE


def log_path(info: dict) -> Path | None:
    """The job's submitit stderr log (where tracebacks and scheduler messages land)."""
    if not info.get("folder") or not info.get("job_id"):
        return None
    from submitit.core.utils import JobPaths

    return JobPaths(info["folder"], job_id=str(info["job_id"]), task_id=0).stderr


def log_tail(path: Path | None, lines: int = 5) -> list[str]:
    """The last non-empty lines of a log (decoded leniently); [] when there is none."""
    if path is None:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:]
