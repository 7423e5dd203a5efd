"""Upscaling time per image at fp32 and bf16 (or fp16), full-size random-weight models, all
variants alternated in one process; any torch device.

    python benchmarks/bench_speed.py [--cases linf-patch,linf-lp,srflow] [--lr 64] [--threads 2]
                                     [--precisions fp32,bf16] [--batch 1] [--repeats 7] [--device cpu]

Prints the hardware, then per case and precision the median wall and CPU time per image,
images/s, the ratios within this run, peak memory, and the issue's targets where they
apply (LINF-patch x4 64x64: fp32 <= 0.150 s, bf16 <= 0.075 s; LINF-LP bf16 <= 1.2x the
bf16 tau path; measured on a quiet 2-core machine of the issue's kind)."""
from __future__ import annotations

import argparse

import torch

import flowsr_lp
from common import CASES, alternate, build, header, load, median, paired_ratio, peak_rss_mb

TARGETS = {("linf-patch", "fp32"): 0.150, ("linf-patch", "bf16"): 0.075}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="linf-patch,linf-lp,srflow")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--lr", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cases, precisions = a.cases.split(","), a.precisions.split(",")
    bad = set(cases) - set(CASES)
    if bad:
        raise SystemExit(f"unknown cases {sorted(bad)}; choose from {CASES}")
    header(f"upscaling x4 of a {a.lr}x{a.lr} LR, batch {a.batch}, {a.device}, precisions {precisions}")
    dev = torch.device(a.device)
    lr = torch.rand(a.batch, 3, a.lr, a.lr, device=dev)
    fns = {}
    for case in cases:
        torch.manual_seed(0)
        flow, prior = build(flowsr_lp, case)
        flow, prior = flow.to(dev), prior.to(dev) if prior is not None else None
        for p in precisions:
            resolver = flowsr_lp.SuperResolver(flow, prior, precision=p)
            kw = {} if prior is not None else {"tau": 0.8}
            fns[(case, p)] = (lambda r, kw: lambda: r.upscale(lr, scale=4, generator=torch.Generator(dev).manual_seed(0),
                                                             **kw))(resolver, kw)
    peak = {}
    if dev.type == "cuda":  # each variant's own peak, measured on one call before the timing
        for key, fn in fns.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            fn()
            peak[key] = torch.cuda.max_memory_allocated(dev) / 2**20
    times = alternate(fns, a.repeats, dev)
    per = 1 / a.batch
    print(f"median of {a.repeats} alternated rounds ({load()} at the end); seconds per image:")
    for (case, p), t in times.items():
        w, c = median(t["wall"]) * per, median(t["cpu"]) * per
        base = times[(case, precisions[0])]
        line = (f"  {case:<13} {p:<5} wall {w:.3f} s  cpu {c:.3f} s  {1 / w:6.2f} img/s   "
                f"{precisions[0]} / this: wall {paired_ratio(t['wall'], base['wall']):.2f}x "
                f"cpu {paired_ratio(t['cpu'], base['cpu']):.2f}x")
        if peak:
            line += f"   peak GPU memory {peak[(case, p)]:.0f} MiB"
        if (case, p) in TARGETS:
            line += f"   [target <= {TARGETS[(case, p)]:.3f} s wall on a quiet 2-core machine]"
        print(line)
    for p in precisions:
        if ("linf-lp", p) in times and ("linf-patch", p) in times:
            lp, tau = times[("linf-lp", p)], times[("linf-patch", p)]
            print(f"  LINF-LP / tau path at {p}: wall {1 / paired_ratio(lp['wall'], tau['wall']):.2f}x, "
                  f"cpu {1 / paired_ratio(lp['cpu'], tau['cpu']):.2f}x   [target <= 1.20x at bf16]")
    print(f"peak RSS {peak_rss_mb():.0f} MB (the whole process)")


if __name__ == "__main__":
    main()
