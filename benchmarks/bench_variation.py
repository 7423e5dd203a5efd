"""Samples around the learned prior (LearnedPrior(variation=t)) against temperature sampling,
and the learned scale's likelihood (issue 20's acceptance figures), on B100 x4 (or any
folder of HR images; LINF at any `--scale`) with the bundled models.

For each flow:
- bits/dim of the HR under N(mu, sigma^2) (the module's scale head; with a residual
  correlation, that correlated Gaussian, and the independent one beside it) and under
  N(mu, s^2) for every global s in {0.5, 0.6, ..., 2.0} (the best s is chosen on the same
  images);
- curves over t in {0.25, 0.5, 1.0} (around the prior) and tau in {0.1, ..., 1.0} (sampling),
  `--draws` draws per image: pixel diversity (mean per-pixel std over draws, gray levels),
  PSNR per draw (Y, shave 4, LINF protocol), grid score, %Inf;
- how far the learned sigma varies over the image: per latent part, the spatial std of the
  channel-mean log sigma and sigma's 5th / 95th percentiles (means over images);
- the ablation the learned scale must beat: samples around the prior with one global scale,
  N(mu, t^2) (the module without its head), for t in {0.25, 0.5, 0.75, 1.0, 1.25}; with a
  residual correlation, also the samples with independent noise (`independent=t`);
- at equal pixel diversity (the tau curve, and the ablation's, interpolated at each t point):
  the PSNR gain of the samples around the prior and the ratio of their grid scores.

Writes JSON and a plot (PSNR and grid against diversity).

    python benchmarks/bench_variation.py --max-images 16 --draws 8 --out runs/variation
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from flowsr_lp import load_flow, load_prior
from flowsr_lp.data.folders import find_images
from flowsr_lp.evaluate import Dataset, make_pair
from flowsr_lp.metrics import diversity, grid_score, psnr
from flowsr_lp.pipeline import LearnedPrior, SuperResolver, TemperatureSampling

from flowsr_lp.precision import hardware_line

TAUS = [round(0.1 * k, 1) for k in range(1, 11)]
VARIATIONS = [0.25, 0.5, 1.0]
FIXED = [0.25, 0.5, 0.75, 1.0, 1.25]  # the ablation: one global scale around the prior
SCALES = [round(0.5 + 0.1 * k, 1) for k in range(16)]


def curve_point(resolver, prepared, hr, lr, strategies) -> dict:
    outs = [resolver.generate(prepared, s) for s in strategies]
    finite = [o.all_finite for o in outs]
    imgs = [o.images.clamp(0, 1) for o, ok in zip(outs, finite) if ok]
    p = [psnr(x, hr, shave=4, y_channel=True).item() for x in imgs]
    g = [grid_score(x, lr).item() for x in imgs]
    div = 255 * diversity(torch.stack(imgs)).item() if len(imgs) > 1 else float("nan")
    return {"psnr": float(np.mean(p)) if p else float("nan"), "grid": float(np.mean(g)) if g else float("nan"),
            "diversity": div, "inf": 100.0 * finite.count(False) / len(finite)}


def sigma_spread(flow, prior, lr, size) -> list[dict]:
    """Per latent part: how much the predicted log sigma varies over positions (the std of
    its channel mean) and sigma's 5th / 95th percentiles over all elements."""
    ctx = flow.condition(lr, size)
    _, log_sigma = LearnedPrior(prior).distribution(flow, lr, ctx)
    out = []
    for ls in log_sigma:
        s = ls.double().exp().flatten()
        out.append({"spatial_std_log_sigma": ls.double().mean(1).std().item(),
                    "sigma_p5": s.quantile(0.05).item(), "sigma_p95": s.quantile(0.95).item()})
    return out


def equal_diversity(summary: dict, point: str, references: list[tuple[str, list, str]]) -> dict:
    """The curve point `point` against each reference curve (keys PREFIX + x for x in xs),
    interpolated at the point's pixel diversity: PSNR gain, grid ratio, the reference's x there,
    and whether that diversity lies inside the reference's range (outside, the curve's end is
    used). Reference points without a diversity (fewer than two finite draws) are left out."""
    d = summary[point]["diversity"]
    out = {"diversity": d}
    for prefix, xs, label in references:
        xs = [x for x in xs if np.isfinite(summary[f"{prefix}{x}"]["diversity"])]
        if not xs:
            continue
        divs = np.array([summary[f"{prefix}{x}"]["diversity"] for x in xs])
        order = np.argsort(divs)

        def at(values):
            return float(np.interp(d, divs[order], np.array(values)[order]))

        ref_grid = at([summary[f"{prefix}{x}"]["grid"] for x in xs])
        out |= {f"psnr_gain_db{label}": summary[point]["psnr"] - at([summary[f"{prefix}{x}"]["psnr"] for x in xs]),
                f"grid_ratio{label}": summary[point]["grid"] / ref_grid if ref_grid else float("nan"),
                f"{prefix[:-1]}_at_equal_diversity": at(xs),
                f"in_range{label}": bool(divs.min() <= d <= divs.max())}
    return out


def without(prior, *parts: str):
    """The same module without `parts` ("scale_head", "residual"; its specialists' heads too):
    mu unchanged. Without both, its samples are N(mu, t^2), the fixed-scale ablation; without
    the residual only, N(mu, (t sigma)^2), independent per element."""
    off = {"scale_head": {"scale_head": False}, "residual": {"residual_reach": 0}}
    if "residual_scales" in prior.config.to_dict():
        off["residual"]["residual_scales"] = ()
    plain = type(prior)(type(prior.config).from_dict({**prior.config.to_dict(), **{k: v for p in parts
                                                                                 for k, v in off[p].items()}}))
    plain.load_state_dict({k: v for k, v in prior.state_dict().items()
                           if not any(name.startswith(parts) for name in k.split("."))})
    return plain.eval()


def without_head(prior):
    """The fixed-scale ablation: the module without its scale head and residual correlation."""
    return without(prior, "scale_head", "residual")


def run_flow(name, flow_id, prior_id, pairs, draws, seed, taus=TAUS) -> dict:
    flow, prior = load_flow(flow_id), load_prior(prior_id)
    plain = without_head(prior)
    resolver = SuperResolver(flow, prior)
    head = bool(getattr(prior.config, "scale_head", False))
    correlated = bool(getattr(prior.config, "residual_reach", 0))
    independent = without(prior, "residual") if correlated else None
    bpd = {"sigma": [], **({"sigma_independent": []} if correlated else {}), **{f"s={s}": [] for s in SCALES},
           "flow": []}
    curves = {f"tau={t}": [] for t in taus} | {f"t={t}": [] for t in VARIATIONS} | \
        ({f"fixed={t}": [] for t in FIXED} if head else {}) | \
        ({f"independent={t}": [] for t in VARIATIONS} if correlated else {})
    spread = []
    for k, (hr, lr) in enumerate(pairs):
        t0 = time.time()
        if head:
            bpd["sigma"].append(resolver.bits_per_dim(hr, lr, LearnedPrior(prior)).item())
            if correlated:
                bpd["sigma_independent"].append(resolver.bits_per_dim(hr, lr, LearnedPrior(independent)).item())
            spread.append(sigma_spread(flow, prior, lr, tuple(hr.shape[-2:])))
        for s in SCALES:
            bpd[f"s={s}"].append(resolver.bits_per_dim(hr, lr, LearnedPrior(plain, variation=s)).item())
        bpd["flow"].append(resolver.bits_per_dim(hr, lr).item())
        prepared = resolver.prepare(lr, size=tuple(hr.shape[-2:]))
        for t in taus:
            curves[f"tau={t}"].append(curve_point(resolver, prepared, hr, lr,
                                                  [TemperatureSampling(t, seed=seed + d) for d in range(draws)]))
        for t in VARIATIONS:
            curves[f"t={t}"].append(curve_point(resolver, prepared, hr, lr,
                                                [LearnedPrior(prior, variation=t, seed=seed + d) for d in range(draws)]))
        for t in FIXED if head else []:
            curves[f"fixed={t}"].append(curve_point(resolver, prepared, hr, lr,
                                                    [LearnedPrior(plain, variation=t, seed=seed + d)
                                                     for d in range(draws)]))
        for t in VARIATIONS if correlated else []:
            curves[f"independent={t}"].append(curve_point(resolver, prepared, hr, lr,
                                                          [LearnedPrior(independent, variation=t, seed=seed + d)
                                                           for d in range(draws)]))
        print(f"{name}: image {k + 1}/{len(pairs)} in {time.time() - t0:.1f} s", flush=True)
    mean = {k: float(np.mean(v)) for k, v in bpd.items() if v}
    best_s = min(SCALES, key=lambda s: mean[f"s={s}"])
    summary = {k: {m: float(np.nanmean([p[m] for p in v])) for m in ("psnr", "grid", "diversity", "inf")}
               for k, v in curves.items()}
    refs = [("tau=", taus, ""), ("fixed=", FIXED if head else [], "_fixed")]
    compare = {f"t={t}": equal_diversity(summary, f"t={t}", refs) for t in VARIATIONS}
    if correlated:  # the scale head alone, independent noise, against the same references
        compare |= {f"independent={t}": equal_diversity(summary, f"independent={t}", refs) for t in VARIATIONS}
    return {"flow": flow_id, "prior": prior_id, "scale_head": head, "taus": list(taus), "bpd": mean,
            "best_global_s": best_s,
            "bpd_gain_over_best_s": (mean[f"s={best_s}"] - mean["sigma"]) if head else None,
            "curves": summary, "equal_diversity": compare,
            "sigma_spread": [{k: float(np.mean([im[part][k] for im in spread])) for k in spread[0][part]}
                             for part in range(len(spread[0]))] if spread else None}


def plot(results: dict, path: Path) -> None:
    fig = Figure(figsize=(10, 4 * len(results)))
    for row, (name, r) in enumerate(results.items()):
        for col, metric in enumerate(("psnr", "grid")):
            ax = fig.add_subplot(len(results), 2, 2 * row + col + 1)
            learned = "learned scale, correlated residual" if f"independent={VARIATIONS[0]}" in r["curves"] \
                else "learned scale"
            for prefix, xs, style, label in (("tau=", r.get("taus", TAUS), "o-", "temperature sampling"),
                                             ("t=", VARIATIONS, "s-", f"around the prior ({learned})"),
                                             ("fixed=", FIXED, "^--", "around the prior (one global scale)"),
                                             ("independent=", VARIATIONS, "v:",
                                              "around the prior (learned scale, independent noise)")):
                if f"{prefix}{xs[0]}" not in r["curves"]:
                    continue
                pts = [r["curves"][f"{prefix}{x}"] for x in xs]
                ax.plot([p["diversity"] for p in pts], [p[metric] for p in pts], style, label=label)
                for x, p in zip(xs, pts):
                    ax.annotate(f"{prefix}{x}", (p["diversity"], p[metric]), fontsize=7)
            ax.set_xlabel("pixel diversity (gray levels)")
            ax.set_ylabel({"psnr": "PSNR per draw (dB)", "grid": "grid score"}[metric])
            ax.set_title(f"{name}: {metric}")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/B100/HR")
    ap.add_argument("--max-images", type=int, default=100)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--scale", type=float, default=4.0, help="the upscale (LINF: any; SRFlow, HCFlow: their own)")
    ap.add_argument("--taus", type=lambda v: [float(t) for t in v.split(",")], default=TAUS,
                    help="the temperatures of the reference curve, comma-separated (default 0.1, ..., 1.0; more where a "
                         "draw around the prior is more diverse than tau 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--flows", default="LINF,SRFlow")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=FLOW:PRIOR",
                    help="another flow and latent module for NAME (a file or a bundled name), e.g. "
                         "SRFlow=runs/v1/srflow-small.safetensors:runs/srflow-small-lp/model.safetensors")
    ap.add_argument("--out", default="runs/variation")
    args = ap.parse_args()
    models = {"LINF": ("linf-small", "linf-small-lp"), "SRFlow": ("srflow-small", "srflow-small-lp")}
    for m in args.model:
        name, _, pair = m.partition("=")
        flow, _, prior = pair.rpartition(":")
        if not (name and flow and prior):
            ap.error(f"--model {m!r}: expected NAME=FLOW:PRIOR")
        models[name] = (flow, prior)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset("B100", Path(args.data), None)
    pairs = []
    for f in find_images([args.data])[: args.max_images]:
        hr, lr, _ = make_pair(f, ds, args.scale, "make")
        pairs.append((hr[None], lr[None]))
    results = {}
    t0 = time.time()
    with torch.no_grad():
        for name in args.flows.split(","):
            results[name] = run_flow(name, *models[name], pairs, args.draws, args.seed, args.taus)
    meta = {"images": len(pairs), "draws": args.draws, "scale": args.scale, "data": args.data, "hardware": hardware_line(),
            "seconds": round(time.time() - t0, 1), "python": platform.python_version()}
    (out / "variation.json").write_text(json.dumps({"meta": meta, **results}, indent=1))
    plot(results, out / "variation.png")
    for name, r in results.items():
        print(name, json.dumps({k: r[k] for k in ("bpd", "best_global_s", "bpd_gain_over_best_s", "sigma_spread",
                                                  "equal_diversity")},
                               indent=1))
    print(f"written {out / 'variation.json'} and {out / 'variation.png'}")


if __name__ == "__main__":
    main()
