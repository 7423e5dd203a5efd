"""`flowsr-lp upscale`: image files or folders in, PNGs out; under torchrun the batches are
shared out over the processes."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..distributed import finish, quiet_other_ranks, setup_distributed
from ..errors import UsageError
from ..images import list_images
from ..cli_options import (add_device, add_precision, add_taps, count, inference_device, parse_scale, parse_size,
                           positive_float, positive_int, seed, temperature, tile_option)
from ..pipeline import SuperResolver
from ..upscale import load_models, output_paths, upscale_files

log = logging.getLogger(__name__)


def add_parser(sub, parents=()) -> None:
    p = sub.add_parser("upscale", parents=list(parents),
                       help="super-resolve images with a flow (and optionally a learned prior)",
                       description="Super-resolve image files or folders. Outputs are 8-bit PNGs, written "
                                   "atomically; a failing input is reported and the others still run.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--flow", help="flow: a checkpoint file (official LINF/SRFlow or flowsr-lp .safetensors), a model "
                                  "name (`flowsr-lp models`), a URL or hf://owner/repo/file; default: the flow a "
                                  "--prior model name belongs to, else the bundled small LINF model")
    p.add_argument("--prior", help="latent module (file, model name, URL or hf://...); its prediction replaces the "
                                   "sampled latent")
    add_taps(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scale", type=parse_scale, help="upscaling factor: S, or SH,SW for anisotropic "
                   "(fixed-scale flows such as SRFlow default to their own)")
    g.add_argument("--size", type=parse_size, help="output size HxW")
    p.add_argument("--tau", type=temperature, default=None, help="sampling temperature (default: the flow's "
                   "recommended one; ignored with --prior)")
    p.add_argument("--variation", type=temperature, default=0.0, metavar="T",
                   help="with --prior: sample around the prior, z = mu + T sigma eps (sigma: the module's learned "
                        "per-region scale, or 1 for a module without one); 0 (default) is the prior's prediction")
    p.add_argument("--draws", type=positive_int, default=1, metavar="N",
                   help="N samples of each input, written as NAME_0.png ... NAME_{N-1}.png (draw d uses seed + d)")
    p.add_argument("--seed", type=seed, default=0, help="random seed; each image is seeded with it (default 0)")
    p.add_argument("--retries", type=count, default=0, help="on an exploding inverse, draw a new sample up to N times")
    p.add_argument("-o", "--out", required=True, help="output folder, or a .png path for a single input")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave outputs that are already whole PNGs of the right size as they are (to finish an "
                        "interrupted run)")
    add_device(p)
    add_precision(p)
    p.add_argument("--max-megapixels", type=positive_float, default=64.0,
                   help="refuse outputs larger than this many megapixels (default 64)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="same-size inputs run together, up to N at a time and at most 512x512 LR pixels in all "
                        "(default 8); each image keeps its own seed, as when alone")
    p.add_argument("--tile", type=tile_option, default="auto", metavar="auto|off|N",
                   help="upscale in tiles of N LR pixels (each with 32 of context), giving the whole image's "
                        "pixels in less memory; auto (default): tiles of 256 above 512x512 LR pixels; off: whole")
    p.add_argument("--prior-max-pixels", type=positive_int, default=1 << 20,
                   help="latent maps with more positions than this run the prior in blended tiles (default 2^20)")
    p.set_defaults(run=run)


def run(args) -> int:
    inputs = list_images(args.inputs)  # outputs checked before any work
    if not inputs:
        raise UsageError("no input images found")
    outs = output_paths(inputs, Path(args.out))
    quiet_other_ranks()
    rank, world, device = setup_distributed(str(inference_device(args.device, args.threads)))
    flow, prior = load_models(args.flow, args.prior, device, args.taps)
    scale = args.scale
    fixed = getattr(flow, "fixed_scale", None)
    if scale is None and args.size is None:
        if fixed is None:
            raise UsageError("give --scale or --size")
        scale = fixed
    if fixed is not None and scale is not None and scale not in (fixed, (fixed, fixed)):
        raise UsageError(f"this flow is fixed-scale x{fixed}; --scale {scale} is not possible")
    if args.variation > 0 and prior is None:
        raise UsageError("--variation samples around a learned prior: give --prior (without one, use --tau)")
    if prior is not None and args.tau is not None:
        log.warning("--tau is ignored with a learned prior (the latent is predicted, not sampled)")
    resolver = SuperResolver(flow, prior, prior_max_pixels=args.prior_max_pixels, precision=args.precision,
                             max_output_pixels=args.max_megapixels * 1e6, tile=args.tile)  # the CLI's limit, not the API default
    failures = upscale_files(resolver, inputs, outs, scale=scale, size=args.size, tau=args.tau, seed=args.seed,
                             retries=args.retries, max_megapixels=args.max_megapixels, progress=not args.quiet,
                             batch_size=args.batch_size, variation=args.variation, draws=args.draws,
                             skip_existing=args.skip_existing, rank=rank, world=world)
    finish(world)
    if rank == 0:
        print(f"{len(inputs) - failures} of {len(inputs)} image(s) written to {args.out}", file=sys.stderr)
    return 0 if failures == 0 else 1
