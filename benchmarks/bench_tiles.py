"""Tiled vs whole (issue 21, item 1): the bundled trained models (linf-small + linf-small-lp,
srflow-small + srflow-small-lp) x4 on real photos (scikit-image's astronaut and coffee, Set14's
baboon and zebra when ../shared is there; centre crops MATLAB-bicubic downscaled to about
120x110 LR), upscaled whole and in tiles of 64 and 96 LR pixels (`SuperResolver(tile=N)`,
32 LR pixels of context). Per model, method and tile side: the largest difference of the shown
(clamped) images over every pixel of every photo, in 1/255, the share of pixels off by more
than 1/255, and the wall time whole and tiled. Methods: sampling at the flow's temperature
(seed 5), the learned prior, and samples around it (variation 0.5, seed 5).

    python benchmarks/bench_tiles.py [--tiles 64,96] [--margin 32] [--threads 1]"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from common import header
from flowsr_lp import SuperResolver, load_flow, load_prior
from flowsr_lp.data.resize import imresize
from flowsr_lp.hub.resolve import bundled_path
from flowsr_lp.pipeline import TemperatureSampling

SET14 = Path(__file__).resolve().parents[2] / "shared" / "data" / "Set14" / "HR"


def lr_of(hr_u8: np.ndarray, side: tuple[int, int]) -> torch.Tensor:
    h, w = hr_u8.shape[:2]
    H, W = 4 * side[0], 4 * side[1]
    crop = torch.from_numpy(np.ascontiguousarray(hr_u8[(h - H) // 2:(h - H) // 2 + H, (w - W) // 2:(w - W) // 2 + W, :3]))
    return (imresize(crop.permute(2, 0, 1), out_size=side).float() / 255)[None]


def photos() -> dict[str, torch.Tensor]:
    out = {"astronaut": lr_of(skdata.astronaut(), (120, 112)), "coffee": lr_of(skdata.coffee(), (99, 121))}
    for name in ("baboon", "zebra"):
        if (SET14 / f"{name}.png").is_file():
            out[name] = lr_of(np.asarray(Image.open(SET14 / f"{name}.png").convert("RGB")), (101, 118))
        else:
            print(f"{SET14} is absent: Set14 left out", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", default="64,96")
    ap.add_argument("--margin", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tiles = [int(t) for t in a.tiles.split(",")]
    header(f"tiled vs whole: bundled models x4, tiles {tiles} LR px + {a.margin} of context")
    lrs = photos()
    print(f"photos: {', '.join(f'{k} {v.shape[-2]}x{v.shape[-1]}' for k, v in lrs.items())}")
    print("| model | method | tile | max gap (1/255) | pixels > 1/255 | whole s | tiled s |")
    print("|---|---|---|---|---|---|---|")
    for family in ("linf", "srflow"):
        flow = load_flow(bundled_path(f"{family}-small"))
        prior = load_prior(bundled_path(f"{family}-small-lp"))
        plain = SuperResolver(flow, tile_margin=a.margin)
        lp = SuperResolver(flow, prior, tile_margin=a.margin)
        methods = [("tau (flow's), seed 5", plain, TemperatureSampling(None, seed=5)), ("prior", lp, lp.strategy),
                   ("prior, variation 0.5, seed 5", lp, lp.strategy.with_noise(variation=0.5, seed=5))]
        for method, resolver, strategy in methods:
            wholes, t_whole = {}, 0.0
            for name, lr in lrs.items():
                t = time.perf_counter()
                wholes[name] = resolver(lr, scale=4, strategy=strategy, tile="off").images.clamp(0, 1)
                t_whole += time.perf_counter() - t
            for side in tiles:
                gap, over, n, t_tiled = 0.0, 0, 0, 0.0
                for name, lr in lrs.items():
                    t = time.perf_counter()
                    tiled = resolver(lr, scale=4, strategy=strategy, tile=side).images.clamp(0, 1)
                    t_tiled += time.perf_counter() - t
                    d = (tiled - wholes[name]).abs() * 255
                    gap, over, n = max(gap, d.max().item()), over + int((d > 1).sum()), n + d.numel()
                print(f"| {family}-small{'-lp' if resolver.prior is not None else ''} | {method} | {side} | "
                      f"{gap:.4f} | {100 * over / n:.3f} % | {t_whole:.1f} | {t_tiled:.1f} |", flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main()
