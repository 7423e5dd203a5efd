"""Learned prior vs tau-sampling, CPU time of one upscale, same flow, same run.

Full-size EDSR-baseline 3x3 LINF + UNet (dim 64) latent module, random weights:
`python benchmarks/bench_lp_speed.py [--lr 64] [--scale 4] [--threads 2] [--repeats 10]`.
Reference (the official code on this kind of machine, 2 threads, 64x64 LR, x4):
0.271 s with the prior, 0.144 s with tau-sampling."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowsr_lp import SuperResolver
from flowsr_lp.flows.linf import LINF, RELEASED as FLOWS
from flowsr_lp.priors.linf_lp import LINFLatentModule, RELEASED as PRIORS

OFFICIAL = {"prior": 0.271, "tau": 0.144}


def timed(fn, repeats):
    fn()  # warm-up: allocator, oneDNN primitives
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lr", type=int, default=64)
    ap.add_argument("--scale", type=float, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    flow = LINF(FLOWS["linf-patch-edsr-baseline"]).eval()
    prior = LINFLatentModule(PRIORS["linf-lp-unet"]).eval()
    lr = torch.rand(1, 3, a.lr, a.lr)
    tau_path, lp_path = SuperResolver(flow), SuperResolver(flow, prior)
    t_tau = timed(lambda: tau_path.upscale(lr, scale=a.scale, tau=0.8, generator=torch.Generator().manual_seed(0)), a.repeats)
    t_lp = timed(lambda: lp_path.upscale(lr, scale=a.scale), a.repeats)
    print(f"LINF 3x3 EDSR-baseline + UNet prior, LR {a.lr}x{a.lr} x{a.scale:g}, {a.threads} threads, "
          f"median of {a.repeats}")
    print(f"tau-sampling : {t_tau:.3f} s")
    print(f"learned prior: {t_lp:.3f} s  ({t_lp / t_tau:.2f}x our tau-sampling; target <= 1.50x)")
    if a.lr == 64 and a.scale == 4 and a.threads == 2:
        print(f"official code: prior {OFFICIAL['prior']:.3f} s, tau {OFFICIAL['tau']:.3f} s -> our prior path is "
              f"{OFFICIAL['prior'] / t_lp:.2f}x faster (target >= 1.5x)")


if __name__ == "__main__":
    main()
