"""`flowsr-lp demo`: the learned prior against fixed temperatures, on the bundled models."""
from __future__ import annotations

import sys
from pathlib import Path

from ..demo import MAX_SIZE, MIN_SIZE, run_demo
from ..errors import UsageError
from ..hub.registry import BUNDLED
from ..hub.resolve import bundled_path
from ..cli_options import add_device, add_precision, inference_device, positive_int


def add_parser(sub, parents=()) -> None:
    p = sub.add_parser("demo", parents=list(parents),
                       help="the learned prior against fixed temperatures, on bundled models and photos",
                       description="Upscale crops of scikit-image's sample photos with the bundled small LINF, "
                                   "SRFlow and HCFlow: sampling at several temperatures (10 draws each) and the learned prior. "
                                   "Writes an HTML report with metrics, crops and a temperature map.")
    p.add_argument("-o", "--out", default="demo", help="output folder (default ./demo)")
    p.add_argument("--images", type=positive_int, default=3, help="number of photos (1-4, default 3)")
    p.add_argument("--size", type=positive_int, default=288,
                   help=f"HR crop size in pixels ({MIN_SIZE}-{MAX_SIZE}, rounded down to a multiple of 12; "
                        "default 288)")
    p.add_argument("--runs", type=positive_int, default=10, help="draws per temperature (default 10)")
    p.add_argument("--alexnet-weights", help="AlexNet ImageNet weights, for LPIPS")
    add_device(p)
    add_precision(p, default="auto")
    p.set_defaults(run=run)


def run(args) -> int:
    missing = [n for n in BUNDLED if not bundled_path(n).is_file()]
    if missing:
        raise UsageError(f"bundled models missing from the installation: {', '.join(missing)}")
    device = inference_device(args.device, args.threads)
    res = run_demo(Path(args.out), args.images, args.size, args.runs, str(device),
                   args.alexnet_weights, progress=not args.quiet, precision=args.precision)
    print(res["paths"]["markdown"].read_text())
    for n in res["notes"]:
        print(f"note: {n}", file=sys.stderr)
    print(f"report: {res['paths']['html']} ({res['seconds']:.0f} s)", file=sys.stderr)
    return 0
