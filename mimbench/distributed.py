"""torch.distributed as mimbench uses it: one process per device, started by torchrun.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op, so the
same code runs a laptop job and a multi-node one.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mimbench.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device_name: str) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPUs); the device of
    this process: cuda:<local rank> when GPUs are used, else the named device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    world = World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    if world.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def autocast(device: torch.device, mode: str):
    """bf16 autocast on `device` when `mode` (optim.amp, run.teacher_amp) is "bf16"."""
    if mode == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on `device`; page-locked first for a GPU, so that the copy is asynchronous."""
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def resolve_device(name: str) -> torch.device:
    """'auto' is the GPU where one is visible, else the CPU; any other name is torch's."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"run.device={name!r} is not a torch device; use auto, cpu, cuda or "
                          f"cuda:<index>.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name} but no GPU is visible here; use run.device=auto "
                          f"(the GPU where there is one) or cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"run.device={name} but this machine has {torch.cuda.device_count()} "
                          f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return device


def world_size() -> int:
    """The number of processes training together (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_all(value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over all processes (itself when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def any_rank(flag: bool) -> bool:
    """Whether `flag` is set on any process (a stop request seen by one rank stops all at the
    same step); the flag itself when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return bool(sum_all(torch.tensor(float(flag))).item() > 0)
    return flag


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
