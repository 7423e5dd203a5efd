"""Held-out bits/dim of flows (their own N(0, I)) and of latent modules (N(mu, sigma^2)) on a
folder of HR images at x4, MATLAB-bicubic 8-bit LR as `evaluate` makes it (issue 19's
"bundled flows that are still flows" figure). Each model is FLOW or FLOW:PRIOR (names or files).

    python benchmarks/bench_bits_per_dim.py linf-small runs/v1/linf-small.safetensors \\
        srflow-small:srflow-small-lp --data ../shared/data/B100/HR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from flowsr_lp import load_flow, load_prior
from flowsr_lp.data.folders import find_images
from flowsr_lp.evaluate import Dataset, make_pair
from flowsr_lp.pipeline import LearnedPrior, SuperResolver
from flowsr_lp.precision import hardware_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="FLOW[:PRIOR]")
    ap.add_argument("--data", default="../shared/data/B100/HR")
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="a JSON file for the figures")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = Dataset(Path(args.data).name, Path(args.data), None)
    pairs = [make_pair(f, ds, args.scale, "make")[:2] for f in find_images([args.data])[: args.max_images]]
    out = {"hardware": hardware_line(), "data": args.data, "images": len(pairs), "scale": args.scale, "bpd": {}}
    with torch.no_grad():
        for spec in args.models:
            flow_id, _, prior_id = spec.partition(":")
            flow = load_flow(flow_id)
            prior = load_prior(prior_id) if prior_id else None
            r = SuperResolver(flow, prior)
            strategy = LearnedPrior(prior) if prior is not None else None
            vals = [r.bits_per_dim(hr[None], lr[None], strategy).item() for hr, lr in pairs]
            out["bpd"][spec] = sum(vals) / len(vals)
            print(f"{spec}: {out['bpd'][spec]:.4f} bits/dim over {len(vals)} images", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
