"""A picture of one B100 crop at x4: the HR, the learned prior (t = 0), and one draw each of
temperature sampling, the samples around the prior with independent noise and with the
module's residual correlation, at about the same pixel diversity (the taus and t of
`bench_variation.py`'s equal-diversity points). Written as a PNG grid with labels.

    python benchmarks/figure_samples.py --out docs/variation-samples-linf-v7.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from flowsr_lp import load_flow, load_prior
from flowsr_lp.data.folders import find_images
from flowsr_lp.evaluate import Dataset, make_pair
from flowsr_lp.metrics import grid_score
from flowsr_lp.pipeline import LearnedPrior, SuperResolver, TemperatureSampling

sys.path.insert(0, str(Path(__file__).parent))
from bench_variation import without  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/B100/HR")
    ap.add_argument("--image", type=int, default=0, help="index of the image in the folder")
    ap.add_argument("--flow", default="linf-small")
    ap.add_argument("--prior", default="linf-small-lp")
    ap.add_argument("--t", type=float, default=0.5, help="variation around the prior")
    ap.add_argument("--tau", type=float, default=0.5, help="temperature of the sampling shown beside it")
    ap.add_argument("--crop", type=int, nargs=3, default=[120, 160, 96], metavar=("Y", "X", "SIZE"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/variation/samples.png")
    args = ap.parse_args()
    f = find_images([args.data])[args.image]
    hr, lr, _ = make_pair(f, Dataset("B100", f.parent, None), 4.0, "make")
    hr, lr = hr[None], lr[None]
    flow, prior = load_flow(args.flow), load_prior(args.prior)
    resolver = SuperResolver(flow, prior)
    with torch.no_grad():
        prepared = resolver.prepare(lr, size=tuple(hr.shape[-2:]))
        panels = [("HR", hr), ("learned prior (t = 0)", resolver.generate(prepared, LearnedPrior(prior)).images),
                  (f"temperature sampling, tau {args.tau:g}",
                   resolver.generate(prepared, TemperatureSampling(args.tau, seed=args.seed)).images)]
        if getattr(prior, "residual", None) is not None:
            panels.append((f"around the prior, t {args.t:g}, independent noise",
                           resolver.generate(prepared, LearnedPrior(without(prior, "residual"), variation=args.t,
                                                                    seed=args.seed)).images))
        panels.append((f"around the prior, t {args.t:g}" + (", correlated" if len(panels) == 4 else ""),
                       resolver.generate(prepared, LearnedPrior(prior, variation=args.t, seed=args.seed)).images))
    y, x, s = args.crop
    fig = Figure(figsize=(2.6 * len(panels), 3.0))
    for k, (label, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        crop = img.clamp(0, 1)[0, :, y:y + s, x:x + s].permute(1, 2, 0).numpy()
        ax.imshow(np.asarray(crop), interpolation="nearest")
        grid = "" if k == 0 else f"\ngrid {grid_score(img.clamp(0, 1), lr).item():.2f}"
        ax.set_title(label + grid, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{f.name} x4, {args.flow} + {args.prior}, crop {s}x{s} at ({y}, {x})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
