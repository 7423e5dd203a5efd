"""CPU time and peak memory of SRFlow 4x upscaling (full-size released architecture,
random weights): `python benchmarks/bench_srflow.py [--lr 64] [--threads 2] [--repeats 5]`."""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from flowsr_lp import SuperResolver
from flowsr_lp.flows.srflow import RELEASED, SRFlow


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lr", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scale", type=int, default=4, choices=[4, 8])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    flow = SRFlow(RELEASED[f"srflow-df2k-{a.scale}x"]).eval()
    n_params = sum(p.numel() for p in flow.parameters())
    resolver = SuperResolver(flow)
    lr = torch.rand(1, 3, a.lr, a.lr)
    base = rss_mb()
    times = []
    for i in range(a.repeats + 1):
        t = time.perf_counter()
        sr = resolver.upscale(lr, scale=a.scale, tau=0.9, generator=torch.Generator().manual_seed(i))
        if i:  # the first call warms up allocators and oneDNN kernels
            times.append(time.perf_counter() - t)
    print(f"SRFlow x{a.scale} ({n_params / 1e6:.1f} M params), LR {a.lr}x{a.lr} -> {tuple(sr.shape[-2:])}, "
          f"{a.threads} threads")
    print(f"time per image: median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, "
          f"{a.repeats} runs)")
    print(f"peak RSS: {rss_mb():.0f} MB total, {rss_mb() - base:.0f} MB above the loaded model")


if __name__ == "__main__":
    main()
