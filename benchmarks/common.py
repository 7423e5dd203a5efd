"""What every benchmark shares: the hardware header, alternated timing with medians, and
the full-size random-weight models of the issue's cases."""
from __future__ import annotations

import importlib
import os
import resource
import statistics
import sys
import time
from typing import Callable

import torch

from flowsr_lp.precision import hardware_line
from flowsr_lp.runtime import keep_freed_memory


def header(title: str) -> None:
    """Print what, where (CPU model, bf16 units, threads, torch, GPU, load) and how; the
    allocator is set up as the CLI sets it (freed memory kept for the next call)."""
    kept = keep_freed_memory()
    print(title)
    print("hardware:", hardware_line(), "; allocator keeps freed memory:", kept)
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))


def load() -> str:
    return "load %.2f" % os.getloadavg()[0]


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def alternate(fns: dict[str, Callable[[], object]], repeats: int, device="cpu") -> dict[str, dict[str, list[float]]]:
    """Per function, seconds per call as {"wall": [...], "cpu": [...]}, calls interleaved
    (a, b, a, b, ...) after one warm-up each, so that a change in machine load hits every
    variant alike. "cpu" is the process's CPU time (user + system, all threads): on a
    loaded machine it tracks the work done far better than the wall clock."""
    for fn in fns.values():
        fn()
    times = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t, c = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name]["wall"].append(time.perf_counter() - t)
            times[name]["cpu"].append(time.process_time() - c)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(xs: list[float], base: list[float]) -> float:
    """Median over rounds of base / this (paired: robust to drifting load); > 1 is faster."""
    return statistics.median(b / a for a, b in zip(xs, base))


def report(times: dict[str, dict[str, list[float]]], base: str) -> None:
    for name, t in times.items():
        w, c = t["wall"], t["cpu"]
        print(f"  {name:<24} wall median {median(w):.3f} s (min {min(w):.3f}), cpu median {median(c):.3f} s;"
              f"  {base} / this: wall {paired_ratio(w, times[base]['wall']):.2f}x, "
              f"cpu {paired_ratio(c, times[base]['cpu']):.2f}x")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: the issue's cases: full-size released architectures with random weights
CASES = ["linf-patch", "linf-lp", "linf-rrdb", "linf-rrdb-lp", "srflow", "srflow-lp"]


def build(pkg, case: str):
    """(flow, prior or None) of a case, built from package `pkg` (flowsr_lp or an older copy):
    linf-patch = EDSR-baseline 3x3 LINF, linf-rrdb = RRDB (nb 23) 3x3 LINF, srflow = SRFlow 4x
    (nb 23, K 16, L 3); "-lp" adds the released UNet (dim 64) latent module."""
    mod = lambda name: importlib.import_module(f"{pkg.__name__}.{name}")  # noqa: E731
    prior = None
    if case.startswith("linf"):
        linf = mod("flows.linf")
        flow = linf.LINF(linf.RELEASED["linf-patch-rrdb" if "rrdb" in case else "linf-patch-edsr-baseline"])
        if case.endswith("-lp"):
            lp = mod("priors.linf_lp")
            prior = lp.LINFLatentModule(lp.RELEASED["linf-lp-unet"])
    else:
        srflow = mod("flows.srflow")
        flow = srflow.SRFlow(srflow.RELEASED["srflow-df2k-4x"])
        if case.endswith("-lp"):
            lp = mod("priors.srflow_lp")
            prior = lp.SRFlowLatentModule(lp.RELEASED["srflow-lp-unet"])
    return flow.eval(), prior.eval() if prior is not None else None
