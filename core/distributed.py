"""Process-group helpers shared by the trainer and the batch runner.

Works unchanged in a plain process (world size 1) and under ``torchrun`` (reads ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``); the backend is gloo on CPU and nccl on GPU.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_dist_info() -> DistInfo:
    """Rank layout from the torchrun environment variables (or a single process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def dist_info() -> DistInfo:
    """Rank layout of the initialised process group, else of the environment."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return env_dist_info()


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Initialise the default process group when launched by torchrun; no-op for one process.

    The backend follows the device: nccl for CUDA, gloo otherwise.
    """
    info = env_dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        dev = torch.device(device) if device is not None else None
        use_cuda = (dev is not None and dev.type == "cuda") or (dev is None and torch.cuda.is_available())
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return dist_info()


def barrier() -> None:
    """Synchronise all ranks (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup_distributed() -> None:
    """Tear the process group down cleanly.

    gloo sometimes aborts a rank at interpreter exit when its threads are still alive
    (pytorch/pytorch#179291): collect garbage, meet at a barrier, then destroy the group.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def all_gather_objects(obj: object) -> list[object]:
    """Gather one picklable object per rank (a list of length 1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        out: list[object] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]
