"""A large image on the CPU: LINF-LP (EDSR-baseline 3x3 LINF + UNet dim 64, full size,
random weights) x4 of a 1024x1024 LR into a 4096x4096 output, upscaled in LR tiles with a
progress bar; prints the time and the peak RSS (the figure `/usr/bin/time -v` reports as
"Maximum resident set size"). Target: under 4 GB.

    /usr/bin/time -v python benchmarks/bench_large.py [--lr 1024] [--precision bf16] [--tile 256] [--margin 32]"""
from __future__ import annotations

import argparse
import time

import torch

import flowsr_lp
from common import build, header, load, peak_rss_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="linf-lp")
    ap.add_argument("--lr", type=int, default=1024)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--margin", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    header(f"large image: {a.case} x4 of a {a.lr}x{a.lr} LR, {a.precision}, tiles {a.tile} + margin {a.margin}")
    torch.manual_seed(0)
    flow, prior = build(flowsr_lp, a.case)
    resolver = flowsr_lp.SuperResolver(flow, prior, precision=a.precision, max_output_pixels=None, tile=a.tile,
                                       tile_margin=a.margin)
    lr = torch.rand(1, 3, a.lr, a.lr)
    base = peak_rss_mb()
    t, c = time.perf_counter(), time.process_time()
    sr = resolver(lr, scale=4).images
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"output {tuple(sr.shape)}, finite: {bool(torch.isfinite(sr).all())}")
    print(f"time: wall {wall:.1f} s, cpu {cpu:.1f} s ({load()} at the end)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB ({base:.0f} MB before upscaling)")


if __name__ == "__main__":
    main()
