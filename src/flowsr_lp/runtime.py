"""Process settings for CPU inference on a machine that may be busy: how many threads to
use, and an allocator that keeps freed memory for the next image instead of returning it
to the kernel (which then has to fault in and zero every page again)."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3  # glibc mallopt parameters
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper bound for it on 64-bit systems
_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, before any caller's
_threads_set_here: int | None = None  # the count configure_cpu set last


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks since boot summed over `cpus`, from /proc/stat; None where
    there is no /proc/stat. Idle and iowait count as idle; steal (a hypervisor's) as busy."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def free_cpus(window: float = 0.25) -> int:
    """CPUs not kept busy by other work, measured now: the available CPUs less their busy
    time over `window` seconds (from /proc/stat), rounded, at least 1. An idle machine gives
    every CPU, right after a previous run too (the load average would still count that
    run); without /proc/stat, every available CPU. More threads than this only slow
    everyone down."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return available_cpus()
    before = _cpu_times(cpus)
    time.sleep(window)
    after = _cpu_times(cpus)
    if before is None or after is None or after[1] <= before[1]:
        return len(cpus)
    busy = len(cpus) * (after[0] - before[0]) / (after[1] - before[1])
    return max(1, min(len(cpus), math.floor(len(cpus) - busy + 0.5)))


def requested_threads() -> tuple[int, str] | None:
    """A thread count the user asked for outside the package: `OMP_NUM_THREADS` (its first
    number), or a `torch.set_num_threads` call made after flowsr_lp was imported; None
    when there is neither."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if first.isdigit() and int(first) > 0:
        return int(first), "OMP_NUM_THREADS"
    current = torch.get_num_threads()
    if current not in (_TORCH_DEFAULT_THREADS, _threads_set_here):
        return current, "torch.set_num_threads"
    return None


def keep_freed_memory(pad_bytes: int = 256 << 20) -> bool:
    """Ask glibc to grow and trim the heap in `pad_bytes` steps and to serve blocks of up to
    32 MB from it, so the large tensors of one image (or tile) reuse the pages of the previous
    one instead of fresh, page-faulting ones (the saving is measured in benchmarks/README.md,
    "Why the code is as it is"). Larger blocks are still
    mapped and returned to the system when freed. False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is None or not hasattr(libc, "mallopt"):
            return False
        return bool(libc.mallopt(_M_TOP_PAD, pad_bytes)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX))
    except OSError:
        return False


def set_threads(n: int) -> None:
    """torch.set_num_threads(n), remembered as the package's own setting (not a caller's)."""
    global _threads_set_here
    torch.set_num_threads(n)
    _threads_set_here = n


def configure_cpu(threads: int | None = None, window: float = 0.25) -> int:
    """Set torch's intra-op threads and the allocator for inference; returns the thread
    count. The count: `threads` when given (the command line's --threads), else the one
    the user asked for (`requested_threads`), else the CPUs free right now (`free_cpus`)."""
    asked = (threads, "--threads") if threads else requested_threads()
    n, why = asked if asked else (free_cpus(window), "free now")
    set_threads(n)
    kept = keep_freed_memory()
    log.info("CPU: %d thread(s) of %d available (%s)%s", n, available_cpus(), why,
             ", allocator keeps freed memory" if kept else "")
    return n


_progress_bars = True


def set_progress_bars(on: bool) -> bool:
    """Process-wide switch for the progress bars a caller cannot reach, such as a download
    started inside `load_flow`; the command line's -q turns it off. Returns the previous value."""
    global _progress_bars
    previous, _progress_bars = _progress_bars, bool(on)
    return previous


def progress_bars() -> bool:
    return _progress_bars
