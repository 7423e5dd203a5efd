"""How well the learned scale sigma (a latent module's scale head) predicts the paper's
best-temperature map (Fig. 2): Spearman's rank correlation over blocks of each image,
per image and pooled over a data set (issue 20's Set14 figure).

    python benchmarks/bench_sigma_correlation.py --data ../shared/data/Set14/HR --region 8
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from flowsr_lp import load_flow, load_prior
from flowsr_lp.data.folders import find_images, load_rgb_uint8
from flowsr_lp.precision import hardware_line
from flowsr_lp.temperature import rank_correlation, temperature_map

TAUS = [round(0.1 * k, 1) for k in range(11)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/Set14/HR")
    ap.add_argument("--region", type=int, default=8, help="block side in HR pixels")
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--metric", default="psnr", choices=["psnr", "l1"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", default="linf-small:linf-small-lp,srflow-small:srflow-small-lp")
    ap.add_argument("--out", default="runs/sigma-correlation.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"hardware": hardware_line(), "region": args.region, "metric": args.metric, "models": {}}
    for pair in args.models.split(","):
        flow_name, prior_name = pair.split(":")
        flow, prior = load_flow(flow_name), load_prior(prior_name)
        per_image, taus_all, sigma_all = {}, [], []
        for f in find_images([args.data]):
            r = temperature_map(flow, load_rgb_uint8(f), args.scale, TAUS, args.region, args.metric, 0,
                                progress=False, prior=prior)
            per_image[f.stem] = r["rank_correlation"]
            taus_all.append(torch.tensor(r["map"]).flatten())
            sigma_all.append(torch.tensor(r["sigma_map"]).flatten())
            print(f"{flow_name}: {f.name} rank correlation {r['rank_correlation']}", flush=True)
        vals = [v for v in per_image.values() if v is not None]
        pooled = rank_correlation(torch.cat(sigma_all), torch.cat(taus_all))
        results["models"][f"{flow_name} + {prior_name}"] = {
            "per_image": per_image, "mean_over_images": float(np.mean(vals)) if vals else None, "pooled": pooled}
        print(f"{flow_name}: mean over images {results['models'][f'{flow_name} + {prior_name}']['mean_over_images']}, "
              f"pooled {pooled}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print("written", args.out)


if __name__ == "__main__":
    main()
