"""Command line: `flowsr-lp <command> ...` (also `python -m flowsr_lp`)."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from . import __version__


class CLIError(Exception):
    """A problem with the whole call (bad option, unusable model): one line, exit 2."""


def parse_scale(text: str) -> float | tuple[float, float]:
    """'4', '3.5', '2,3' or '2x3' (rows, columns)."""
    parts = re.split(r"[,x]", text.strip())
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid scale {text!r} (expected S or SH,SW)") from None
    if len(vals) not in (1, 2) or not all(v > 0 and v < float("inf") for v in vals):
        raise argparse.ArgumentTypeError(f"scale must be positive, got {text!r}")
    return vals[0] if len(vals) == 1 else (vals[0], vals[1])


def parse_taps(text: str) -> list[int]:
    """SRFlow's RRDB tap indices: '1,8,15,22'."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid taps {text!r} (expected comma-separated block indices)") from None


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (expected HxW with positive integers)")
    return int(m.group(1)), int(m.group(2))


def _add_upscale(sub) -> None:
    p = sub.add_parser("upscale", help="super-resolve images with a flow (and optionally a learned prior)",
                       description="Super-resolve image files or folders. Outputs are 8-bit PNGs, written "
                                   "atomically; a failing input is reported and the others still run.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--flow", help="flow checkpoint (official LINF/SRFlow or flowsr-lp .safetensors); "
                                  "default: the bundled small LINF model")
    p.add_argument("--prior", help="latent-module checkpoint; its prediction replaces the sampled latent")
    p.add_argument("--taps", type=parse_taps, default=None,
                   help="SRFlow only: RRDB block indices the flow conditions on, e.g. 1,8,15,22 "
                        "(default: the released models' ones)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scale", type=parse_scale, help="upscaling factor: S, or SH,SW for anisotropic "
                   "(fixed-scale flows such as SRFlow default to their own)")
    g.add_argument("--size", type=parse_size, help="output size HxW")
    p.add_argument("--tau", type=float, default=None, help="sampling temperature (default: the flow's "
                   "recommended one; ignored with --prior)")
    p.add_argument("--seed", type=int, default=0, help="random seed; each image is seeded with it (default 0)")
    p.add_argument("--retries", type=int, default=0, help="on an exploding inverse, draw a new sample up to N times")
    p.add_argument("-o", "--out", required=True, help="output folder, or a .png path for a single input")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps ...)")
    p.add_argument("--max-megapixels", type=float, default=64.0,
                   help="refuse outputs larger than this many megapixels (default 64)")
    p.add_argument("--prior-max-pixels", type=int, default=1 << 20,
                   help="latent maps with more positions than this run the prior in blended tiles (default 2^20)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_upscale)


def _run_upscale(args) -> int:
    from .upscale import upscale_files

    return upscale_files(args)


def _add_train(sub, task: str) -> None:
    what = "a flow by likelihood (LINF stage 1 / fine-tune, SRFlow)" if task == "flow" else \
        "a latent module through a frozen flow (FlowSR-LP)"
    p = sub.add_parser(f"train-{task}", help=f"train {what}",
                       description=f"Train {what} from a YAML recipe (see configs/). Under torchrun it runs "
                                   "distributed: torchrun --nproc_per_node N -m flowsr_lp " + f"train-{task} CONFIG")
    p.add_argument("config", help="YAML recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optim.lr=2e-4 --set run.out=runs/x (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from run.out/checkpoint.pt exactly where it stopped")
    p.add_argument("--vgg-weights", help="torchvision VGG19 ImageNet weights file for the perceptual loss")
    p.add_argument("--perceptual", choices=["vgg", "none"], help="perceptual loss (none: pixel L1 + latent L1)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the recipe's run.device, auto)")
    p.set_defaults(func=lambda a: _run_train(a, task))


def _run_train(args, task: str) -> int:
    from .train.config import ConfigError, load_config
    from .train.run import train
    from .train.trainer import TrainingError

    overrides = list(args.set)
    if args.vgg_weights:
        overrides.append(f"loss.vgg_weights={args.vgg_weights}")
    if args.perceptual:
        overrides.append(f"loss.perceptual={args.perceptual}")
    if args.device:
        overrides.append(f"run.device={args.device}")
    try:
        train(load_config(args.config, overrides, task), resume=args.resume)
    except (ConfigError, TrainingError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="measure a flow (and prior) on data sets: PSNR, SSIM, LPIPS, LR-PSNR, %%Inf, grid",
                       description="Evaluate sampling at each --tau (with --runs seeds) and the learned prior on data "
                                   "sets, at several scales. Writes results.csv, summary.json, table.md and report.html. "
                                   "Under torchrun the images are split over the processes.")
    p.add_argument("--flow", required=True)
    p.add_argument("--prior")
    p.add_argument("--taps", type=parse_taps, default=None, help="SRFlow RRDB taps")
    p.add_argument("--data", nargs="+", required=True, metavar="NAME_OR_FOLDER",
                   help="Set5, Set14, B100, Urban100, DIV2K (looked up in $FLOWSR_LP_DATA, ./data, ./data/benchmark) "
                        "or folders of HR images (or holding HR/ and LR_bicubic/X*)")
    p.add_argument("--scales", nargs="+", type=float, default=[4.0])
    p.add_argument("--tau", nargs="+", type=float, default=[0.8], help="sampling temperatures (default 0.8)")
    p.add_argument("--runs", type=int, default=1, help="samples per image and temperature (for %%Inf, diversity)")
    p.add_argument("--protocol", choices=["linf", "srflow"], default="linf",
                   help="linf: float PSNR (Y on benchmarks, RGB on DIV2K, shave = scale), MATLAB SSIM; "
                        "srflow: uint8 images, RGB PSNR, skimage SSIM")
    p.add_argument("--lr-source", choices=["auto", "make", "folder"], default="auto",
                   help="official LR files where present (auto), always MATLAB-bicubic from HR (make), or files only")
    p.add_argument("--seed", type=int, default=0, help="run r samples with seed + r (recorded in the outputs)")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (needs AlexNet ImageNet weights)")
    p.add_argument("--alexnet-weights", help="torchvision AlexNet ImageNet weights file for LPIPS")
    p.add_argument("--report-images", type=int, default=2, help="images per data set and scale shown as crops")
    p.add_argument("-o", "--out", default="eval", help="output folder (default ./eval)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=lambda a: __import__("flowsr_lp.evaluate", fromlist=["run_cli"]).run_cli(a))


def _add_temperature_map(sub) -> None:
    p = sub.add_parser("temperature-map", help="per-region best sampling temperature of an image (the paper's Fig. 2)",
                       description="Downscale IMAGE (the ground truth) by --scale, decode one noise draw at every "
                                   "temperature, and search each region's best temperature for the whole-image metric.")
    p.add_argument("image")
    p.add_argument("--flow", required=True)
    p.add_argument("--taps", type=parse_taps, default=None, help="SRFlow RRDB taps")
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--taus", nargs="+", type=float, default=None, help="temperature grid (default 0, 0.1, ..., 1)")
    p.add_argument("--region", type=int, default=24, help="region side in HR pixels (default 24: on LINF's 3x3 grid)")
    p.add_argument("--metric", choices=["lpips", "psnr", "l1"], default="lpips")
    p.add_argument("--alexnet-weights", help="AlexNet ImageNet weights for LPIPS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="temperature-map")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=lambda a: __import__("flowsr_lp.temperature", fromlist=["run_cli"]).run_cli(a))


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the learned prior against fixed temperatures, on bundled models and photos",
                       description="Upscale crops of scikit-image's sample photos with the bundled small LINF and "
                                   "SRFlow: sampling at several temperatures (10 draws each) and the learned prior. "
                                   "Writes an HTML report with metrics, crops and a temperature map.")
    p.add_argument("-o", "--out", default="demo", help="output folder (default ./demo)")
    p.add_argument("--images", type=int, default=3, help="number of photos (1-4, default 3)")
    p.add_argument("--size", type=int, default=288, help="HR crop size in pixels (default 288)")
    p.add_argument("--runs", type=int, default=10, help="draws per temperature (default 10)")
    p.add_argument("--alexnet-weights", help="AlexNet ImageNet weights, for LPIPS")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=lambda a: __import__("flowsr_lp.demo", fromlist=["run_cli"]).run_cli(a))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowsr-lp", description="Flow-based super-resolution with learned priors "
                                     "(FlowSR-LP, CVPR 2024): LINF and SRFlow, sampling or learned prior.")
    parser.add_argument("--version", action="version", version=f"flowsr-lp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_upscale(sub)
    _add_train(sub, "flow")
    _add_train(sub, "prior")
    _add_evaluate(sub)
    _add_temperature_map(sub)
    from .datasets import add_parser as add_data_parser

    add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"flowsr-lp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flowsr-lp: interrupted", file=sys.stderr)
        return 130


def error_line(path: Path | str, msg: str) -> str:
    return f"error: {path}: {msg}" if not str(msg).startswith(str(path)) else f"error: {msg}"
