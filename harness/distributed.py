"""Process-group setup for data-parallel runs, and the few collectives the trainer uses.

Where the ranks come from, in order:
1. an already initialised ``torch.distributed`` group (the caller set it up);
2. torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
3. a multi-task submitit job (``SUBMITIT_EXECUTOR`` set): ``TorchDistributedEnvironment``
   exports the same variables from the SLURM / local job environment;
4. otherwise a single process.
The backend is nccl on CUDA, gloo on the CPU. Only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False          # we initialised the group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _export_submitit_env() -> None:
    """Under a multi-task submitit job, export torchrun-style variables (no-op otherwise)."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "RANK" in os.environ:
        return
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return
    try:
        if JobEnvironment().num_tasks <= 1:
            return
    except Exception:  # noqa: BLE001 - not really inside a job: single process
        return
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def _pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def setup(device: str | None = None) -> DistInfo:
    """Join (or create) the process group described by the environment; returns this rank."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = torch.device(device) if device else _pick_device(local)
        return DistInfo(rank, world, local, dev, owns_group=False)
    _export_submitit_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device) if device else _pick_device(local)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, owns_group=False)
    rank = int(os.environ["RANK"])
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, **kwargs)
    return DistInfo(rank, world, local, dev, owns_group=True)


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum across ranks (in place; returns the tensor); identity in one process."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """rank src's object on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
