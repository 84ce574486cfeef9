"""Process group and device: one process per device, started by torchrun (or alone).

``torchrun --nproc_per_node N -m armvision finetune ...`` runs the same command on N processes;
each finds its rank in the environment torchrun sets. NCCL joins GPUs, gloo joins CPU processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError

__all__ = ["DistInfo", "setup", "process_rank", "is_main_process", "teardown", "all_reduce_sum", "all_gather_object",
           "union_over_ranks", "barrier", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """"auto" -> this process's GPU if there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but no CUDA GPU is available; use --device cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
    return dev


def process_rank() -> int:
    """This process's rank: the process group's once joined, else the one torchrun set (RANK), else 0.
    Readable before :func:`setup` (e.g. to configure logging)."""
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0: the process that prints, logs and writes files."""
    return process_rank() == 0


def setup(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or run alone; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and device.startswith("cuda:"):
        raise ConfigError(f"device {device!r} under torchrun ({world} processes) would put every process on one "
                          "GPU; use --device cuda or auto (each process takes the GPU of its LOCAL_RANK)")
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":  # binding the device lets NCCL set up eagerly and barrier() know its GPU
            dist.init_process_group(backend="nccl", device_id=dev)
        else:
            dist.init_process_group(backend="gloo")
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistInfo(rank, world, local_rank, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place; returned). No-op when alone."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any) -> list[Any]:
    if dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def union_over_ranks(names: set[str]) -> set[str]:
    """The union of every rank's ``names`` (one object gather; every rank must call it)."""
    return {n for part in all_gather_object(sorted(names)) for n in part}


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
