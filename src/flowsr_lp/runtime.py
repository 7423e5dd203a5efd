"""Process settings for CPU inference on a machine that may be busy: how many threads to
use, and an allocator that keeps freed memory for the next image instead of returning it
to the kernel (which then has to fault in and zero every page again)."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

import torch

log = logging.getLogger(__name__)

_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3  # glibc mallopt parameters
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper bound for it on 64-bit systems


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def free_cpus() -> int:
    """CPUs not kept busy by other work: the available CPUs minus the one-minute load
    average, at least 1. More threads than this only slow everyone down."""
    n = available_cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return n
    return max(1, min(n, round(n - load)))


def keep_freed_memory(pad_bytes: int = 256 << 20) -> bool:
    """Ask glibc to grow and trim the heap in `pad_bytes` steps and to serve blocks of up to
    32 MB from it, so the large tensors of one image (or tile) reuse the pages of the previous
    one instead of fresh, page-faulting ones: about 15 % of the CPU time of a 64x64 LINF
    upscale, and 30 % of a tiled 1024x1024 LR (benchmarks/README.md). Larger blocks are still
    mapped and returned to the system when freed. False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is None or not hasattr(libc, "mallopt"):
            return False
        return bool(libc.mallopt(_M_TOP_PAD, pad_bytes)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX))
    except OSError:
        return False


def configure_cpu(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: the CPUs the current load leaves free) and the
    allocator for inference; returns the thread count."""
    free = free_cpus()
    n = threads if threads else free
    torch.set_num_threads(n)
    kept = keep_freed_memory()
    log.info("CPU: %d thread(s) of %d available (%d free under the current load)%s", n, available_cpus(),
             free, ", allocator keeps freed memory" if kept else "")
    return n
