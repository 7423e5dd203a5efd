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
