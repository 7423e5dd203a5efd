"""`flowsr-lp evaluate`: under torchrun the units are shared out over the processes, rank 0
merges the rows and writes the report; OUT/units records finished units for --resume."""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import __version__
from ..checkpoints import load_flow, load_prior
from ..distributed import finish, quiet_other_ranks, setup_distributed
from ..errors import UsageError
from ..evaluate import LEFT_OUT, EvalOptions, evaluate, summarise
from ..hub.resolve import flow_for_prior
from ..report import write_outputs
from ..shards import Journal
from ..cli_options import (add_device, add_precision, add_scales, add_taps, add_taus, count, positive_int,
                           resolve_device, seed, temperature)


def add_parser(sub, parents=()) -> None:
    p = sub.add_parser("evaluate", parents=list(parents),
                       help="measure a flow (and prior) on data sets: PSNR, SSIM, LPIPS, LR-PSNR, %%Inf, grid",
                       description="Evaluate sampling at each --tau (with --runs seeds) and the learned prior on data "
                                   "sets, at several scales. Writes results.csv, summary.json, table.md and report.html. "
                                   "Under torchrun the (image, method, run) units are shared out over the processes; "
                                   "--resume continues an interrupted evaluation.")
    p.add_argument("--flow", help="flow: a file, a model name (`flowsr-lp models`), a URL or hf://owner/repo/file; "
                                  "may be left out when --prior is a model name (its flow is used)")
    p.add_argument("--prior", help="latent module: a file, a model name, a URL or hf://owner/repo/file")
    add_taps(p)
    p.add_argument("--data", nargs="+", required=True, metavar="NAME_OR_FOLDER",
                   help="Set5, Set14, B100, Urban100, DIV2K (looked up in $FLOWSR_LP_DATA, ./data, ./data/benchmark) "
                        "or folders of HR images (or holding HR/ and LR_bicubic/X*)")
    add_scales(p, [4.0])
    add_taus(p, [0.8], "sampling temperatures (default 0.8)")
    p.add_argument("--bicubic", action="store_true", help="add a bicubic baseline row (MATLAB-style bicubic "
                   "upsampling of the LR) to every table and the report")
    p.add_argument("--variation", "--variations", dest="variations", nargs="+", type=temperature, default=[],
                   metavar="T", help="with --prior: rows 'LP variation=T' sampling around the prior, z = mu + T sigma "
                                     "eps (sigma: the module's learned scale, or 1), --runs draws each")
    p.add_argument("--bpd", action="store_true", help="a bits/dim column: the HR's negative log2-likelihood per "
                   "sub-pixel under each method's latent distribution (tau rows: N(0, tau^2); the prior: "
                   "N(mu, sigma^2); variation T: N(mu, (T sigma)^2); tau 0 has none)")
    p.add_argument("--sr-space", action="store_true", help="the NTIRE SR-space diversity score over each "
                   "method's --runs draws (spatial LPIPS: needs the AlexNet weights, see --alexnet-weights)")
    p.add_argument("--runs", type=positive_int, default=1,
                   help="samples per image and temperature (for %%Inf, diversity)")
    p.add_argument("--protocol", choices=["linf", "srflow"], default="linf",
                   help="linf: float PSNR (Y on benchmarks, RGB on DIV2K, shave = scale), MATLAB SSIM; "
                        "srflow: uint8 images, RGB PSNR, skimage SSIM")
    p.add_argument("--lr-source", choices=["auto", "make", "folder"], default="auto",
                   help="official LR files where present (auto), always MATLAB-bicubic from HR (make), or files only")
    p.add_argument("--seed", type=seed, default=0, help="run r samples with seed + r (recorded in the outputs)")
    p.add_argument("--max-images", type=positive_int, default=None, help="use the first N images of each set")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (needs AlexNet ImageNet weights)")
    p.add_argument("--alexnet-weights", help="torchvision AlexNet ImageNet weights file for LPIPS")
    p.add_argument("--report-images", type=count, default=2, help="images per data set and scale shown as crops")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="same-size images upscaled together, up to N at a time and at most 512x512 LR pixels in "
                        "all (default 8); every image keeps its own seeds, as when alone")
    p.add_argument("-o", "--out", default="eval", help="output folder (default ./eval)")
    p.add_argument("--resume", action="store_true",
                   help="continue the evaluation recorded in -o (OUT/units): finished units are skipped; the "
                        "options must be the ones it was started with")
    add_device(p)
    add_precision(p)
    p.set_defaults(run=run)


def run(args) -> int:
    quiet_other_ranks()
    rank, world, device = setup_distributed(str(resolve_device(args.device)))
    opts = EvalOptions(data=args.data, scales=args.scales, taus=args.taus, runs=args.runs, protocol=args.protocol,
                       seed=args.seed, use_lpips=not args.no_lpips, alexnet_weights=args.alexnet_weights,
                       max_images=args.max_images, lr_source=args.lr_source, report_images=args.report_images,
                       bicubic=args.bicubic, precision=args.precision, batch_size=args.batch_size,
                       variations=args.variations, bpd=args.bpd, sr_space=args.sr_space)
    if opts.variations and not args.prior:
        raise UsageError("--variation samples around a learned prior: give --prior")
    out = Path(args.out)
    args.flow = args.flow or flow_for_prior(args.prior)
    if args.flow is None:
        raise UsageError("give --flow (or a --prior model name, which names its flow)")
    flow = load_flow(args.flow, device=device, taps=args.taps)
    prior = load_prior(args.prior, device=device) if args.prior else None
    t0 = time.time()
    journal = Journal(out / "units", settings(args, opts, device), resume=args.resume, rank=rank, world=world)
    rows, notes, crops = evaluate(flow, prior, opts, out, rank, world, progress=not args.quiet, journal=journal)
    journal.close()
    finish(world)
    if rank != 0:
        return 0
    notes = list(dict.fromkeys(notes))
    if not opts.use_lpips:
        notes.append("LPIPS not computed (--no-lpips)")
    summary = summarise(rows)
    meta = {"description": f"{flow.kind} flow {args.flow}" + (f" with learned prior {args.prior}" if prior else "")
            + f", {opts.protocol} protocol", "flow": str(args.flow), "prior": str(args.prior or ""),
            "options": asdict(opts), "seeds": {f"tau run {r}": opts.seed + r for r in range(opts.runs)},
            "processes": world, "device": str(device), "seconds": round(time.time() - t0, 1),
            "flowsr_lp": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "command": " ".join(sys.argv)}
    paths = write_outputs(out, rows, summary, crops, meta, notes, f"FlowSR-LP evaluation: {meta['description']}")
    print(paths["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    failed = sum(LEFT_OUT in n for n in notes)
    if failed:
        print(f"{failed} input(s) could not be used (see the error lines and the report's notes)", file=sys.stderr)
    return 1 if failed else 0


#: the option behind each field of EvalOptions, as a resumed run names what differs
OPTION_NAMES = {"data": "--data", "scales": "--scales", "taus": "--tau", "runs": "--runs", "protocol": "--protocol",
                "seed": "--seed", "use_lpips": "--no-lpips", "alexnet_weights": "--alexnet-weights",
                "max_images": "--max-images", "lr_source": "--lr-source", "report_images": "--report-images",
                "bicubic": "--bicubic", "precision": "--precision", "batch_size": "--batch-size",
                "variations": "--variation", "bpd": "--bpd", "sr_space": "--sr-space"}


def settings(args, opts: EvalOptions, device) -> dict:
    """What the recorded units depend on, by option name (a resume must give the same)."""
    fields = asdict(opts)
    out = {OPTION_NAMES.get(k, k): v for k, v in fields.items()}
    out.update({"--flow": str(args.flow), "--prior": str(args.prior or ""), "--taps": args.taps,
                "--device": device.type})
    return out
