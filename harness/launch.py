"""Send run specs to SLURM (job arrays), local processes or the current process, via submitit.

One code path for all three executors: each run becomes one submitit job calling
``TrainJob(spec)``; only how submitit executes it differs. A job that SLURM preempts or times
out checkpoints through submitit's ``Checkpointable`` and is requeued; the run then resumes
from its own per-epoch checkpoint, so no work older than one epoch is lost.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml

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
    tasks_per_node: int | None = None      # None: one task (DDP rank) per GPU, see tasks_per_node_of
    array_parallelism: int = 32
    signal_delay_s: int = 120
    max_num_timeout: int = 3
    setup: tuple[str, ...] = ()
    additional_parameters: dict[str, Any] = field(default_factory=dict)


def load_profile(path: str | Path) -> ClusterProfile:
    """Read and validate a cluster profile; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"cluster profile {path} not found (expected a YAML file such as slurm/profiles/example-cluster.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise LaunchError(f"cluster profile {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LaunchError(f"cluster profile {path}: expected a mapping of settings, got {type(data).__name__}")
    fields_ = ClusterProfile.__dataclass_fields__
    unknown = sorted(set(data) - set(fields_))
    if unknown:
        raise LaunchError(f"cluster profile {path}: unknown key(s) {unknown}; valid: {', '.join(fields_)}")
    if not data.get("partition"):
        raise LaunchError(f"cluster profile {path}: 'partition' is required (the SLURM partition to submit to)")
    for key in ("gpus_per_node", "cpus_per_task", "timeout_min", "nodes", "tasks_per_node",
                "array_parallelism", "signal_delay_s", "max_num_timeout"):
        if key in data and (not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 0):
            raise LaunchError(f"cluster profile {path}: '{key}' must be a non-negative integer, got {data[key]!r}")
    if "additional_parameters" in data and not isinstance(data["additional_parameters"], dict):
        raise LaunchError(f"cluster profile {path}: 'additional_parameters' must be a mapping of sbatch options")
    data["setup"] = tuple(data.get("setup") or ())
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


def tasks_per_node_of(profile: ClusterProfile) -> int:
    """SLURM tasks per node of a job: the profile's ``tasks_per_node``, else one per GPU
    (``gpus_per_node``, at least 1), so that more GPUs per node means DDP over them."""
    if profile.tasks_per_node is not None:
        return profile.tasks_per_node
    return max(1, profile.gpus_per_node)


def _slurm_parameters(profile: ClusterProfile, job_name: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "slurm_partition": profile.partition,
        "name": job_name,
        "gpus_per_node": profile.gpus_per_node,
        "cpus_per_task": profile.cpus_per_task,
        "timeout_min": profile.timeout_min,
        "nodes": profile.nodes,
        "tasks_per_node": tasks_per_node_of(profile),
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
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=profile.max_num_timeout)
    ex.update_parameters(**_slurm_parameters(profile, job_name))
    return ex


def sbatch_script(profile: ClusterProfile, folder: Path, n_jobs: int, job_name: str = "point-peft-bench") -> str:
    """The sbatch script submitit would submit for an array of ``n_jobs`` (for --dry-run).

    Built by submitit's own SLURM executor, so it is exactly what a real submission sends.
    """
    slurm = _slurm_executor(folder, profile, job_name)._executor  # noqa: SLF001
    slurm.parameters["map_count"] = n_jobs
    return slurm._make_submission_file_text(slurm._submitit_command_str, "dry-run")  # noqa: SLF001


def submit(specs: list[dict], executor: submitit.Executor) -> list[submitit.Job]:
    """Submit one TrainJob per spec; several specs on SLURM go out as one job array."""
    if not specs:
        return []
    return executor.map_array(TrainJob(), specs)


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
