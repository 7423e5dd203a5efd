"""torchrun support shared by training and evaluation."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .errors import UsageError


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) for a plain run or a torchrun-launched one."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"invalid device {device!r} (expected auto, cpu, cuda, cuda:N, mps ...)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"device {device}: no such CUDA device here (use auto or cpu)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {device}: MPS is not available here (use auto or cpu)")
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def gather_objects(obj, world: int) -> list:
    """Every process's `obj`, in rank order (just [obj] without torchrun)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def finish(world: int) -> None:
    """Leave the process group cleanly (an abandoned gloo group can abort at exit)."""
    if world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
