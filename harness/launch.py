"""Send run specs to SLURM (job arrays), local processes or the current process, via submitit.

One code path for all three executors: each run becomes one submitit job calling
``TrainJob(spec)``; only how submitit executes it differs. A job that SLURM preempts or times
out checkpoints through submitit's ``Checkpointable`` and is requeued; the run then resumes
from its own per-epoch checkpoint, so no work older than one epoch is lost.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml
from submitit.core.utils import FailedJobError, FailedSubmissionError

from models.errors import BenchError

EXECUTORS = ("slurm", "local", "debug")


class LaunchError(BenchError):
    """A submission that cannot be made: bad profile, no sbatch, unknown executor."""


@dataclass(frozen=True)
class ClusterProfile:
    """SLURM resources for every job of a submission (a YAML file in ``slurm/profiles``)."""

    partition: str
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: float | None = None
    timeout_min: int = 24 * 60
    nodes: int = 1
    tasks_per_node: int = 1
    array_parallelism: int = 32
    signal_delay_s: int = 120
    max_num_timeout: int = 3
    max_array_size: int | None = None   # jobs per array; null = the cluster's MaxArraySize
    setup: tuple[str, ...] = ()
    additional_parameters: dict[str, Any] = field(default_factory=dict)


# SLURM's own rules for the names that reach an ``#SBATCH`` line (slurm.conf: partition, account
# and QOS names are words; a constraint is features joined by & | , with optional [] () * counts).
# Anything else (a newline above all: it would start a new script line) is refused.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.\-&|,*\[\]()!:]+$")
_OPTION_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NAME_FIELDS = ("partition", "account", "qos")
INT_FIELDS = ("gpus_per_node", "cpus_per_task", "timeout_min", "nodes", "tasks_per_node",
              "array_parallelism", "signal_delay_s", "max_num_timeout")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_job_name(name, where: str = "experiment name") -> str:
    """A SLURM job name (the experiment's ``name``): a word of letters, digits, ``_ . -``."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 200:
        raise LaunchError(f"{where} {name!r}: expected a job name of letters, digits, '_', '.', '-' "
                          "(it becomes #SBATCH --job-name and a log folder name)")
    return name


def check_script_text(value, where: str) -> str:
    """A free-text value that lands in the sbatch script: one line, no control characters."""
    if not isinstance(value, str) or _CONTROL.search(value):
        raise LaunchError(f"{where}: expected one line of text without control characters, got {value!r}")
    return value


def _check_profile(data: dict, path: Path) -> None:
    """Type and SLURM-syntax checks of every value that reaches the sbatch script."""
    def bad(key: str, expected: str):
        return LaunchError(f"cluster profile {path}: '{key}' must be {expected}, got {data[key]!r}")

    if not isinstance(data.get("partition"), str) or not data["partition"]:
        raise LaunchError(f"cluster profile {path}: 'partition' is required (the SLURM partition to submit "
                          f"to), got {data.get('partition')!r}")
    for key in NAME_FIELDS:
        if data.get(key) is not None and not (isinstance(data[key], str) and _NAME.match(data[key])):
            raise bad(key, "a SLURM name (letters, digits, '_', '.', '-') or null")
    if data.get("constraint") is not None and not (isinstance(data["constraint"], str)
                                                   and _CONSTRAINT.match(data["constraint"])):
        raise bad("constraint", "SLURM features joined by & | , (e.g. \"a100|h100\") or null")
    for key in INT_FIELDS:
        if key in data and (not _is_int(data[key]) or data[key] < 0):
            raise bad(key, "a non-negative integer")
    for key in ("timeout_min", "nodes", "tasks_per_node", "array_parallelism"):
        if key in data and data[key] < 1:
            raise bad(key, "a positive integer")
    if data.get("max_array_size") is not None and (not _is_int(data["max_array_size"]) or data["max_array_size"] < 1):
        raise bad("max_array_size", "a positive integer or null (null: the cluster's MaxArraySize)")
    if data.get("mem_gb") is not None:
        mem = data["mem_gb"]
        if isinstance(mem, bool) or not isinstance(mem, (int, float)) or not math.isfinite(mem) or mem <= 0:
            raise bad("mem_gb", "a positive number of GB or null")
    setup = data.get("setup")
    if setup is not None and not (isinstance(setup, list) and all(isinstance(x, str) for x in setup)):
        raise bad("setup", "a list of shell lines (strings)")
    for i, line in enumerate(setup or []):
        check_script_text(line, f"cluster profile {path}: setup[{i}]")
    extra = data.get("additional_parameters")
    if extra is not None and not isinstance(extra, dict):
        raise bad("additional_parameters", "a mapping of sbatch options")
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not _OPTION_KEY.match(key):
            raise LaunchError(f"cluster profile {path}: additional_parameters key {key!r}: expected an sbatch "
                              "option name in lower case with '_' (e.g. mail_type)")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise LaunchError(f"cluster profile {path}: additional_parameters.{key} must be a string or a "
                              f"number, got {value!r}")
        check_script_text(str(value), f"cluster profile {path}: additional_parameters.{key}")


def load_profile(path: str | Path) -> ClusterProfile:
    """Read and validate a cluster profile; errors name the file and the key.

    Every value that reaches the sbatch script is checked for its type and SLURM's syntax
    (names, constraint expressions, option keys; no control characters anywhere); ``setup``
    is the one place where shell is intended: a list of strings, one line each.
    """
    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"cluster profile {path} not found (expected a YAML file such as slurm/profiles/example-cluster.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise LaunchError(f"cluster profile {path} is not valid YAML: {' '.join(str(err).split())}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LaunchError(f"cluster profile {path}: cannot read it ({err})") from None
    if not isinstance(data, dict):
        raise LaunchError(f"cluster profile {path}: expected a mapping of settings, got {type(data).__name__}")
    fields_ = ClusterProfile.__dataclass_fields__
    unknown = sorted(set(map(str, data)) - set(fields_))
    if unknown:
        raise LaunchError(f"cluster profile {path}: unknown key(s) {unknown}; valid: {', '.join(fields_)}")
    _check_profile(data, path)
    data["setup"] = tuple(data.get("setup") or ())
    data["additional_parameters"] = dict(data.get("additional_parameters") or {})
    return ClusterProfile(**data)


class TrainJob(submitit.helpers.Checkpointable):
    """The picklable callable every job runs: one training run from its resolved config.

    ``checkpoint`` (inherited) resubmits the same spec; ``harness.train.run`` resumes from the
    run's last per-epoch checkpoint.
    """

    def __call__(self, spec: dict) -> dict:
        import torch

        from harness import train  # imported in the job process, not at submission time

        # use the CPUs SLURM allocated, not every core of the node: jobs sharing a node would
        # otherwise oversubscribe it (OpenMP threads stall each other badly)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and cpus.isdigit():
            torch.set_num_threads(int(cpus))
        return train.run_from_spec(spec)


def _slurm_parameters(profile: ClusterProfile, job_name: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "slurm_partition": profile.partition,
        "name": job_name,
        "gpus_per_node": profile.gpus_per_node,
        "cpus_per_task": profile.cpus_per_task,
        "timeout_min": profile.timeout_min,
        "nodes": profile.nodes,
        "tasks_per_node": profile.tasks_per_node,
        "slurm_array_parallelism": profile.array_parallelism,
        "slurm_signal_delay_s": profile.signal_delay_s,
    }
    if profile.mem_gb is not None:
        params["mem_gb"] = profile.mem_gb
    for key in ("account", "qos", "constraint"):
        if getattr(profile, key):
            params[f"slurm_{key}"] = getattr(profile, key)
    if profile.setup:
        params["slurm_setup"] = list(profile.setup)
    if profile.additional_parameters:
        params["slurm_additional_parameters"] = dict(profile.additional_parameters)
    return params


def make_executor(kind: str, folder: Path, profile: ClusterProfile | None = None,
                  job_name: str = "point-peft-bench") -> submitit.Executor:
    """A configured submitit executor of ``kind`` writing its logs under ``folder``."""
    if kind not in EXECUTORS:
        raise LaunchError(f"unknown executor {kind!r}; valid: {', '.join(EXECUTORS)}")
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=(profile.timeout_min if profile else 24 * 60))
        return ex
    if profile is None:
        raise LaunchError("the slurm executor needs a cluster profile (--profile slurm/profiles/NAME.yaml)")
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch not found on PATH: run on a SLURM login node, or use --executor local|debug "
                          "(slurm/start_cluster.sh starts a local test cluster)")
    return _slurm_executor(folder, profile, job_name)


def _slurm_executor(folder: Path, profile: ClusterProfile, job_name: str) -> submitit.AutoExecutor:
    check_job_name(job_name)
    check_script_text(str(folder), "log folder")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=profile.max_num_timeout)
    ex.update_parameters(**_slurm_parameters(profile, job_name))
    return ex


def sbatch_script(profile: ClusterProfile, folder: Path, n_jobs: int, job_name: str = "point-peft-bench") -> str:
    """The sbatch script submitit would submit for an array of ``n_jobs`` (for --dry-run).

    Built by submitit's own SLURM executor, so it is exactly what a real submission sends; it
    needs neither sbatch nor srun on this machine.
    """
    from unittest import mock

    from submitit.slurm.slurm import SlurmExecutor

    # submitit refuses to build a SLURM executor where `srun` is missing; writing a script
    # needs no srun, so the check is bypassed for the dry run only
    with mock.patch.object(SlurmExecutor, "affinity", classmethod(lambda cls: 2)):
        slurm = _slurm_executor(folder, profile, job_name)._executor  # noqa: SLF001
    slurm.parameters["map_count"] = n_jobs
    return slurm._make_submission_file_text(slurm._submitit_command_str, "dry-run")  # noqa: SLF001


def cluster_max_array_size() -> int | None:
    """``MaxArraySize`` of the SLURM controller (``scontrol show config``); None if unknown."""
    if shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(match.group(1)) if match else None


def array_size(kind: str, profile: ClusterProfile | None) -> int | None:
    """Jobs per SLURM array: the profile's ``max_array_size``, else the cluster's MaxArraySize
    (array indices run 0..n-1 and must stay below it); None = no cap (not SLURM, or unknown)."""
    if kind != "slurm":
        return None
    if profile is not None and profile.max_array_size:
        return profile.max_array_size
    return cluster_max_array_size()


def chunks(items: list, size: int | None) -> list[list]:
    """``items`` in consecutive pieces of at most ``size`` (one piece when size is None)."""
    if not items:
        return []
    if not size:
        return [items]
    return [items[i:i + size] for i in range(0, len(items), size)]


def submit(specs: list[dict], executor: submitit.Executor) -> list[submitit.Job]:
    """Submit one TrainJob per spec; several specs on SLURM go out as one job array.

    A scheduler that refuses the request (sbatch's own message: no controller reachable,
    "Requested node configuration is not available", a bad array ...) is one LaunchError line.
    """
    if not specs:
        return []
    captured = io.StringIO()   # submitit echoes sbatch's stderr; it goes into the one-line error
    try:
        with contextlib.redirect_stderr(captured):
            return executor.map_array(TrainJob(), specs)
    except (FailedJobError, FailedSubmissionError, OSError) as err:
        text = " ".join((str(err) or captured.getvalue() or type(err).__name__).split())
        raise LaunchError(f"the scheduler refused the submission of {len(specs)} job(s): {text}") from None


# ----------------------------------------------------------------------------- job bookkeeping

def job_info(kind: str, job: submitit.Job, folder: Path) -> dict[str, Any]:
    """What ``run_state`` needs later to ask the scheduler about this job."""
    from datetime import datetime, timezone

    return {"executor": kind, "job_id": str(job.job_id), "folder": str(folder),
            "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def scheduler_state(info: dict[str, Any]) -> str | None:
    """The scheduler's word on a recorded job: SLURM state names; local: RUNNING or FINISHED."""
    if info.get("executor") == "slurm":
        if shutil.which("sacct") is None:
            return None
        return submitit.SlurmJob(folder=info["folder"], job_id=info["job_id"]).state
    if info.get("executor") == "local":
        try:
            pid = int(info["job_id"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (ValueError, OSError):
            return "FINISHED"
        return "RUNNING" if b"submitit" in cmdline else "FINISHED"
    return None
