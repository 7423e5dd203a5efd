"""torchrun support shared by training and evaluation."""
from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from .errors import UsageError


#: how long a process waits for the others in a collective call (environment variable, in
#: minutes). Rank 0 validates alone while the others wait, and `evaluate`'s ranks wait for
#: the slowest shard at the end, so the default is well above NCCL's 10 minutes.
TIMEOUT_ENV = "FLOWSR_LP_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 120


def process_group_timeout() -> datetime.timedelta:
    """$FLOWSR_LP_DIST_TIMEOUT_MIN minutes (default `DEFAULT_TIMEOUT_MIN`)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip() or str(DEFAULT_TIMEOUT_MIN)
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise UsageError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of minutes")
    return datetime.timedelta(minutes=minutes)


def quiet_other_ranks() -> None:
    """Under torchrun, ranks other than 0 log warnings and errors only: rank 0 speaks for the job."""
    if int(os.environ.get("RANK", 0)) > 0:
        logging.getLogger("flowsr_lp").setLevel(logging.WARNING)


def local_cuda_device(local_rank: str | None, visible: int) -> torch.device:
    """This process's GPU under torchrun: cuda:LOCAL_RANK, which must be one of the `visible`
    devices (one GPU per process on the node; with CUDA_VISIBLE_DEVICES set per process, as
    SLURM does, each process sees one GPU and LOCAL_RANK must be 0 there)."""
    try:
        index = int(local_rank or 0)
    except ValueError:
        index = -1
    if not 0 <= index < visible:
        raise UsageError(f"LOCAL_RANK={local_rank} but this process sees {visible} CUDA device(s) "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start at most "
                         f"{visible} processes per node (torchrun --nproc-per-node {visible}), or, when each process "
                         "is given its own GPU, set LOCAL_RANK=0 for it")
    return torch.device("cuda", index)


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) for a plain run or a torchrun-launched one. Under torchrun
    each process takes GPU LOCAL_RANK (`local_cuda_device`) and the process group waits up to
    `process_group_timeout()` in collective calls."""
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
    if dev.type == "mps" and world > 1:
        raise UsageError("torchrun with MPS is not supported (gloo cannot move MPS tensors); use one process "
                         "or --device cpu")
    if dev.type == "cuda" and world > 1:
        dev = local_cuda_device(os.environ.get("LOCAL_RANK"), torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=process_group_timeout())
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
