"""How much a per-position scale around the prior could gain at most: the latent term of the
bits/dim (-log2 N(z*; mu, v) per latent element, constants left out) for the true latents z*
of HR images under variances v that know more and more: unit, one global value, an LR-gradient
fit (fitted per image, so optimistic), and oracles from the true residual smoothed over 7x7
positions (per position; per element). Issue 20's ceiling for a learned scale head.

    python benchmarks/bench_scale_ceiling.py --data ../shared/data/B100/HR --max-images 8
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from flowsr_lp import load_flow, load_prior
from flowsr_lp.data.folders import find_images
from flowsr_lp.evaluate import Dataset, make_pair
from flowsr_lp.pipeline import LearnedPrior
from flowsr_lp.precision import hardware_line


def latent_term(d2: torch.Tensor, var: torch.Tensor) -> float:
    return (0.5 * torch.log(var) + 0.5 * d2 / var).sum().item()


def gradient_fit(lr: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """exp of a least-squares fit of log(per-position residual energy) on log(LR gradient)."""
    g = lr[0].mean(0)
    e = F.pad((g[1:] - g[:-1]).abs(), (0, 0, 0, 1)) + F.pad((g[:, 1:] - g[:, :-1]).abs(), (0, 1, 0, 0))
    le = torch.log(F.interpolate(e[None, None], size=pos.shape[-2:], mode="bilinear")[0, 0].double() + 1e-3)
    a = torch.stack([torch.ones_like(le).flatten(), le.flatten()], 1)
    coef = torch.linalg.lstsq(a, torch.log(pos + 1e-8).flatten()[:, None]).solution
    return torch.exp((a @ coef).view_as(le))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/B100/HR")
    ap.add_argument("--max-images", type=int, default=8)
    ap.add_argument("--models", default="linf-small:linf-small-lp,srflow-small:srflow-small-lp")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(hardware_line())
    files = find_images([args.data])[: args.max_images]
    for pair in args.models.split(","):
        flow_id, prior_id = pair.split(":")
        flow, prior = load_flow(flow_id), load_prior(prior_id)
        tot = dict.fromkeys(("unit", "global", "lr_gradient_fit", "oracle_7x7_position", "oracle_7x7_element"), 0.0)
        n = 0
        for f in files:
            hr, lr, _ = make_pair(f, Dataset("x", f.parent, None), 4.0, "make")
            hr, lr = hr[None], lr[None]
            with torch.no_grad():
                lr, ctx, (h, w) = flow.density_context(lr, tuple(hr.shape[-2:]))
                z, _ = flow.encode(hr[..., :h, :w], ctx)
                mu, _ = LearnedPrior(prior).distribution(flow, lr, ctx)
            for zz, mm in zip(z, mu):
                d2 = (zz - mm).double().pow(2)[0]
                pos = d2.mean(0)
                smooth = lambda x: F.avg_pool2d(x[None], 7, 1, 3, count_include_pad=False)[0]  # noqa: E731
                fit = gradient_fit(lr, pos)
                tot["unit"] += latent_term(d2, torch.ones_like(d2))
                tot["global"] += latent_term(d2, d2.mean().expand_as(d2))
                tot["lr_gradient_fit"] += latent_term(d2, (fit * d2.mean() / fit.mean()).expand_as(d2))
                tot["oracle_7x7_position"] += latent_term(d2, smooth(pos[None]).expand_as(d2))
                tot["oracle_7x7_element"] += latent_term(d2, smooth(d2))
                n += d2.numel()
        print(pair, {k: round(v / n / math.log(2), 4) for k, v in tot.items()}, "bits per latent element")


if __name__ == "__main__":
    main()
