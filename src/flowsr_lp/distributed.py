"""torchrun support shared by training and evaluation."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) for a plain run or a torchrun-launched one."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
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
