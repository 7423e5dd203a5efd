"""`flowsr-lp temperature-map`: the paper's Fig. 2 for one image."""
from __future__ import annotations

from pathlib import Path

from ..checkpoints import load_flow, load_prior
from ..data.folders import load_rgb_uint8
from ..errors import UsageError
from ..metrics import LPIPSUnavailable
from ..temperature import save_temperature_map, temperature_map
from ..cli_options import add_device, add_taps, add_taus, positive_float, positive_int, resolve_device, seed

DEFAULT_TAUS = [round(0.1 * k, 6) for k in range(11)]


def add_parser(sub, parents=()) -> None:
    p = sub.add_parser("temperature-map", parents=list(parents),
                       help="per-region best sampling temperature of an image (the paper's Fig. 2)",
                       description="Downscale IMAGE (the ground truth) by --scale, decode one noise draw at every "
                                   "temperature, and search each region's best temperature for the whole-image metric.")
    p.add_argument("image")
    p.add_argument("--flow", required=True, help="a checkpoint file, a model name (`flowsr-lp models`), a URL or "
                                                 "hf://owner/repo/file")
    p.add_argument("--prior", help="a latent module with a scale head: draw its learned scale beside the map and "
                                   "report the rank correlation of the two over the regions")
    add_taps(p)
    p.add_argument("--scale", type=positive_float, default=4.0, help="upscaling factor (default 4)")
    add_taus(p, None, "temperature grid (default 0, 0.1, ..., 1)")
    p.add_argument("--region", type=positive_int, default=24, help="region side in HR pixels (default 24: on LINF's 3x3 grid)")
    p.add_argument("--metric", choices=["lpips", "psnr", "l1"], default="lpips")
    p.add_argument("--alexnet-weights", help="AlexNet ImageNet weights for LPIPS")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("-o", "--out", default="temperature-map")
    add_device(p)
    p.set_defaults(run=run)


def run(args) -> int:
    taus = [round(t, 6) for t in args.taus] if args.taus else DEFAULT_TAUS
    device = resolve_device(args.device)
    flow = load_flow(args.flow, device=device, taps=args.taps)
    prior = load_prior(args.prior, device=device) if args.prior else None
    if prior is not None and not getattr(prior.config, "scale_head", False):
        raise UsageError(f"--prior {args.prior}: this latent module has no scale head, so no learned scale to draw")
    hr_u8 = load_rgb_uint8(Path(args.image))
    try:
        result = temperature_map(flow, hr_u8, args.scale, taus, args.region, args.metric, args.seed,
                                 args.alexnet_weights, device, progress=not args.quiet, prior=prior)
    except LPIPSUnavailable as e:
        raise UsageError(f"{e} (or use --metric psnr)") from None
    summary = save_temperature_map({**result, "image": str(args.image), "flow": str(args.flow)}, Path(args.out))
    print(f"{args.metric}: best single tau {summary['best_single_tau']:g} -> {summary['best_single_score']:.4f}; "
          f"per-region temperatures -> {summary['per_region_score']:.4f} (map in {Path(args.out) / 'temperature_map.png'})"
          + (f"; rank correlation of the learned sigma with the best tau: {summary['rank_correlation']:.3f}"
             if summary.get("rank_correlation") is not None else ""))
    return 0
