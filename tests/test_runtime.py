"""Process settings for CPU inference: how many threads (--threads, OMP_NUM_THREADS, a caller's
torch.set_num_threads, else the CPUs idle at the start). The allocator's page-fault figures
are measured by benchmarks/bench_memory.py, not asserted here."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from flowsr_lp import SuperResolver, TemperatureSampling, cli, runtime
from flowsr_lp.cli_options import inference_device

from helpers import tiny_linf


def fake_proc_stat(monkeypatch, cpus, samples):
    """`free_cpus` on `cpus` CPUs whose /proc/stat (busy, total) ticks read as `samples`."""
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    readings = iter(samples)
    monkeypatch.setattr(runtime, "_cpu_times", lambda cpus: next(readings))


@pytest.mark.parametrize("cpus,busy_fraction,free", [(2, 0.0, 2), (2, 0.02, 2), (2, 0.5, 1), (2, 1.0, 1),
                                                      (8, 5.4 / 8, 3), (8, 1.0, 1), (8, 0.2, 6)])
def test_free_cpus_are_the_cpus_idle_over_the_window(monkeypatch, cpus, busy_fraction, free):
    """Idle right after a run (load average ~0.6 on 2 CPUs, which used to give 1) is 2."""
    fake_proc_stat(monkeypatch, cpus, [(1000, 5000), (1000 + round(1000 * busy_fraction), 6000)])
    assert runtime.free_cpus(window=0) == free


def test_without_proc_stat_every_cpu_is_used(monkeypatch):
    fake_proc_stat(monkeypatch, 4, [None, None])
    assert runtime.free_cpus(window=0) == 4
    fake_proc_stat(monkeypatch, 4, [(10, 100), (10, 100)])  # no tick in between
    assert runtime.free_cpus(window=0) == 4


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc/stat")
def test_this_machines_cpu_times_are_read():
    cpus = os.sched_getaffinity(0)
    busy, total = runtime._cpu_times(cpus)
    assert 0 <= busy <= total
    assert runtime._cpu_times({max(cpus) + 10_000}) is None  # a CPU that is not there
    assert 1 <= runtime.free_cpus(window=0.05) <= len(cpus)


@pytest.mark.skipif(not os.path.exists("/proc/stat") or not 2 <= runtime.available_cpus() <= 8,
                    reason="Linux, 2-8 CPUs (one busy child per CPU)")
def test_cpus_kept_busy_by_other_processes_are_left_to_them():
    """One CPU-bound process per CPU: at most one thread is taken, on any machine (the
    measurement can only see more load than ours, never less)."""
    code = "import sys; sys.stdout.write('go\\n'); sys.stdout.flush()\nwhile True: pass"
    children = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
                for _ in range(runtime.available_cpus())]
    try:
        for child in children:
            assert child.stdout.readline() == "go\n"  # spinning now
        assert runtime.free_cpus(window=0.3) == 1
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_thread_count_precedence(monkeypatch):
    """--threads, then OMP_NUM_THREADS, then a caller's torch.set_num_threads, then the idle CPUs."""
    monkeypatch.setattr(runtime, "free_cpus", lambda window: 3)
    monkeypatch.setattr(runtime, "_TORCH_DEFAULT_THREADS", torch.get_num_threads())
    monkeypatch.setattr(runtime, "_threads_set_here", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")
    assert runtime.configure_cpu(4) == 4 == torch.get_num_threads()
    assert runtime.configure_cpu() == 2 == torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert runtime.configure_cpu() == 3 == torch.get_num_threads()  # its own setting is not the caller's
    torch.set_num_threads(5)  # the caller's own
    assert runtime.requested_threads() == (5, "torch.set_num_threads")
    assert runtime.configure_cpu() == 5 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # not a count: ignored
    monkeypatch.setattr(runtime, "_TORCH_DEFAULT_THREADS", 5)
    assert runtime.configure_cpu() == 3


def test_a_previous_commands_threads_are_not_taken_for_the_callers(monkeypatch):
    """`flowsr-lp models --threads 1` then `upscale` in the same process: the second measures."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "_TORCH_DEFAULT_THREADS", 2)
    monkeypatch.setattr(runtime, "free_cpus", lambda window: 2)
    monkeypatch.setattr(cli.models, "run", lambda args: 0)
    assert cli.main(["models", "--threads", "1"]) == 0 and torch.get_num_threads() == 1
    assert runtime.requested_threads() is None and runtime.configure_cpu() == 2


def test_inference_device_passes_threads_on(monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with caplog.at_level("INFO", logger="flowsr_lp.runtime"):
        assert inference_device("cpu", 1).type == "cpu"
    assert torch.get_num_threads() == 1 and "(--threads)" in caplog.text


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_command_takes_threads(monkeypatch, capsys):
    parsers = list(_parsers(cli.build_parser()))
    assert len(parsers) > 10
    assert all("--threads" in p._option_string_actions for p in parsers)
    for argv in (["--threads", "1", "models"], ["models", "list", "--threads", "1"]):
        torch.set_num_threads(2)
        assert cli.main(argv) == 0 and torch.get_num_threads() == 1
    with pytest.raises(SystemExit) as e:
        cli.main(["models", "--threads", "0"])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err


def test_the_python_api_keeps_the_callers_thread_count():
    torch.set_num_threads(1)
    SuperResolver(tiny_linf(3))(torch.rand(1, 3, 6, 6), scale=2, strategy=TemperatureSampling(0.5, seed=0))
    assert torch.get_num_threads() == 1
