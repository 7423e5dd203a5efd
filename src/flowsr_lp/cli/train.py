"""`flowsr-lp train-flow` and `flowsr-lp train-prior`: a YAML recipe, optionally under torchrun."""
from __future__ import annotations

from ..errors import UsageError
from ..train.config import load_config
from ..train.run import train

TASKS = {"flow": "a flow by likelihood (LINF stage 1 / fine-tune, SRFlow)",
         "prior": "a latent module through a frozen flow (FlowSR-LP)"}


def add_parser(sub, parents=()) -> None:
    for task, what in TASKS.items():
        p = sub.add_parser(f"train-{task}", parents=list(parents), help=f"train {what}",
                           description=f"Train {what} from a YAML recipe (see configs/). Under torchrun it runs "
                                       f"distributed: torchrun --nproc_per_node N -m flowsr_lp train-{task} CONFIG")
        p.add_argument("config", help="YAML recipe")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set optim.lr=2e-4 --set run.out=runs/x (repeatable)")
        p.add_argument("--resume", action="store_true", help="continue from run.out/checkpoint.pt exactly where it stopped")
        p.add_argument("--overwrite", action="store_true",
                       help="start afresh even though run.out holds an earlier run's checkpoint (which is replaced)")
        p.add_argument("--vgg-weights", help="torchvision VGG19 ImageNet weights file for the perceptual loss")
        p.add_argument("--perceptual", choices=["vgg", "none"], help="perceptual loss (none: pixel L1 + latent L1)")
        p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (default: the recipe's run.device, auto)")
        p.set_defaults(run=run, task=task)


def run(args) -> int:
    overrides = list(args.set)
    if args.vgg_weights:
        overrides.append(f"loss.vgg_weights={args.vgg_weights}")
    if args.perceptual:
        overrides.append(f"loss.perceptual={args.perceptual}")
    if args.device:
        overrides.append(f"run.device={args.device}")
    if args.threads:
        overrides.append(f"run.threads={args.threads}")  # the recipe's own would override --threads
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in run.out, --overwrite replaces it: give one of them")
    train(load_config(args.config, overrides, args.task), resume=args.resume, overwrite=args.overwrite)
    return 0
