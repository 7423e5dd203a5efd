"""Tiled vs whole-map latent-module inference on a real image.

`python benchmarks/bench_prior_tiling.py [--flow F --prior P] [--image IMG] [--tile 64 --overlap 16]`
Defaults: the reference EDSR-baseline 3x3 LINF + LP from ../shared/reference (random
weights) on the first B100 image, LR by bicubic /4, SR x4. Prints how far the tiled latent
and image are from the whole-map ones, and whether the differences concentrate on tile
borders (a seam would)."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from flowsr_lp import load_flow, load_prior
from flowsr_lp.images import read_image
from flowsr_lp.priors.tiling import predict_latent, tile_starts
from flowsr_lp.precision import hardware_line

SHARED = Path(os.environ.get("FLOWSR_LP_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def psnr(a, b):
    return 10 * math.log10(1 / F.mse_loss(a.clamp(0, 1), b.clamp(0, 1)).item())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flow", default=SHARED / "reference" / "linf-patch-edsr-baseline.pth")
    ap.add_argument("--prior", default=SHARED / "reference" / "linf-patch-edsr-baseline-LP.pth")
    ap.add_argument("--image", default=None)
    ap.add_argument("--scale", type=float, default=4)
    ap.add_argument("--as-lr", action="store_true", help="upscale the image itself (a big-image case) "
                    "instead of its bicubic /scale version")
    ap.add_argument("--tiles", default="64:16:0,64:0:32,64:16:32,96:32:32", help="tile:overlap:margin triples")
    a = ap.parse_args()
    print("hardware:", hardware_line())
    torch.manual_seed(0)
    flow, prior = load_flow(a.flow), load_prior(a.prior)
    img = a.image or sorted((SHARED / "data" / "B100" / "HR").glob("*.png"))[0]
    hr, _ = read_image(img)
    lr = hr[None] if a.as_lr else F.interpolate(hr[None], scale_factor=1 / a.scale, mode="bicubic",
                                                antialias=True).clamp(0, 1)
    size = (round(lr.shape[-2] * a.scale), round(lr.shape[-1] * a.scale))
    with torch.no_grad():
        ctx = flow.condition(lr, size)
        z0 = flow.initial_prior(lr, ctx)
        whole = predict_latent(prior, z0, lr)
        sr_whole = flow.decode(whole, ctx)
        print(f"{Path(img).name}: LR {tuple(lr.shape[-2:])} -> SR {size}, latent map {tuple(z0[0].shape[-2:])}, "
              f"latent std {whole[0].std():.3f}")
        for spec in a.tiles.split(","):
            tile, overlap, margin = map(int, spec.split(":"))
            tiled = predict_latent(prior, z0, lr, max_pixels=0, tile=tile, overlap=overlap, margin=margin)
            sr = flow.decode(tiled, ctx)
            d = (tiled[0] - whole[0]).abs().mean(1)[0]  # per latent position
            H, W = d.shape
            border = torch.zeros(H, W, dtype=torch.bool)
            stride = tile - overlap
            for r in tile_starts(H, tile, stride)[1:]:
                border[max(0, r - 1): r + 1] = True
                border[max(0, r + overlap - 1): r + overlap + 1] = True
            for c in tile_starts(W, tile, stride)[1:]:
                border[:, max(0, c - 1): c + 1] = True
                border[:, max(0, c + overlap - 1): c + overlap + 1] = True
            inner = d[~border].mean().item() if (~border).any() else float("nan")
            print(f"tile {tile:3d} overlap {overlap:2d} margin {margin:2d}: latent |diff| mean {d.mean():.4f} max {d.max():.4f}; "
                  f"SR PSNR vs whole {psnr(sr, sr_whole):.2f} dB; |diff| on tile borders {d[border].mean():.4f} "
                  f"vs elsewhere {inner:.4f}")


if __name__ == "__main__":
    main()
