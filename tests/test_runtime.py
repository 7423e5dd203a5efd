"""Process settings for CPU inference: threads from the free cores."""
import torch

from flowsr_lp import runtime


def test_threads_follow_the_free_cores(monkeypatch):
    monkeypatch.setattr(runtime, "available_cpus", lambda: 8)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (5.4, 0.0, 0.0))
    assert runtime.free_cpus() == 3
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (11.0, 0.0, 0.0))
    assert runtime.free_cpus() == 1  # never below one
    before = torch.get_num_threads()
    try:
        assert runtime.configure_cpu() == 1 == torch.get_num_threads()
        assert runtime.configure_cpu(2) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_kept_memory_serves_large_tensors_without_fresh_pages():
    """After keep_freed_memory, a 16 MB tensor freed and allocated again reuses its pages
    (glibc would otherwise map fresh ones and fault on them every time). Run in child
    processes: the setting is process-wide."""
    code = """
import resource, sys, torch
from flowsr_lp.runtime import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else None
def cycle():
    torch.empty(4 << 20).fill_(1.0)   # 16 MB, touched
cycle(); cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    import os
    import subprocess
    import sys

    # glibc configured to map every block over 128 KB afresh (as setting M_TOP_PAD alone did)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10)}

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True,
                             env=env).stdout.split()
        return out[0], int(out[1])

    kept, with_setting = faults("kept")
    _, without = faults("plain")
    assert kept == "True"  # glibc (Linux): the setting took
    assert without >= 20 * 256  # the test sees the difference: fresh pages every cycle
    # typically none, at most about a third of them (the kernel may still reclaim heap pages)
    assert 2 * with_setting < without, (with_setting, without)
