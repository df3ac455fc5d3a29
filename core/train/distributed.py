"""Processes under ``torchrun``: which device each one uses, the process group, and the few collective
helpers both training loops need (unwrap, barrier, every rank agreeing on a flag).

The device decision is a pure function of the environment so that it can be tested without GPUs:
under ``torchrun`` each process must take ``cuda:LOCAL_RANK``, never plain ``cuda`` (= every rank on GPU 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False        # this call made the process group (and so destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def choose_device(env: Mapping[str, str], cuda_count: int, requested: str | None) -> str:
    """The device string for this process from the torchrun variables, the visible CUDA devices and the
    user's ``--device`` (None/"" = CUDA when present, else CPU)."""
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if requested and not requested.startswith("cuda"):
        return requested
    if requested and ":" in requested:      # an explicit GPU is the user's (or the launcher's) choice
        index = int(requested.split(":", 1)[1])
        if index >= cuda_count:
            raise ValueError(f"--device {requested}: only {cuda_count} CUDA device(s) visible")
        return requested
    if cuda_count == 0:
        if requested:
            raise ValueError("--device cuda: no CUDA device is visible (use --device cpu)")
        return "cpu"
    if local_rank >= cuda_count:
        raise ValueError(f"LOCAL_RANK {local_rank} but only {cuda_count} CUDA device(s) visible: start at most "
                         f"{cuda_count} processes per node")
    return f"cuda:{local_rank}"


def visible_cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pick_device(requested: str | None = None) -> torch.device:
    """This process's device (see :func:`choose_device`)."""
    return torch.device(choose_device(os.environ, visible_cuda_devices(), requested))


def process_group_backend(device: torch.device | str) -> str:
    """nccl for CUDA processes, gloo otherwise: the process's device decides, not whether CUDA exists (a
    ``--device cpu`` run on a GPU machine uses gloo, whose collectives take the CPU tensors it has)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def setup_distributed(requested_device: str | None = None, *, timeout: timedelta | None = None) -> DistInfo:
    """Join (or make) the process group when ``WORLD_SIZE`` > 1: nccl on CUDA, gloo on CPU. ``timeout``: how
    long a collective waits for the slowest rank (torch's default when None)."""
    device = pick_device(requested_device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=process_group_backend(device),
                                **({"timeout": timeout} if timeout is not None else {}))
        owns = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), device, owns)


def teardown_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    return dev if dev.type == "cuda" else torch.device("cpu")   # nccl needs CUDA tensors, gloo CPU ones


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on at least one (one all-reduce; the flag itself otherwise)."""
    if not _grouped():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Each value summed over all ranks (the values themselves without a process group)."""
    if not _grouped():
        return list(values)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device(device))
    dist.all_reduce(t)
    return t.cpu().tolist()
