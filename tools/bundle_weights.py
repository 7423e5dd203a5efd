"""Copy trained runs into the package as its bundled models and write weights/TRAINING.md.

`python tools/bundle_weights.py [--runs runs]` after training with configs/cpu/*.yaml:
  flowsr-lp train-flow configs/cpu/linf-small.yaml ...  (see weights/TRAINING.md for the exact commands)
Each model is re-saved in the project format with its training record in the metadata."""
from __future__ import annotations

import argparse
import csv
import json
import platform
from pathlib import Path

import torch
import yaml

from flowsr_lp.checkpoints import load_flow, load_prior, read_checkpoint, save_flow, save_prior
from flowsr_lp.hub.registry import BUNDLED, WEIGHTS


def last_row(path: Path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--commands", default=None, help="JSON {name: command line} used to train each model")
    a = ap.parse_args()
    commands = json.loads(Path(a.commands).read_text()) if a.commands else {}
    lines = ["# How the bundled models were trained", "",
             "All four were trained on the CPU (2 cores) of a development machine, from the recipes in "
             "`configs/cpu/`, on T91 (91 images) + BSDS200 (200 images) from `../shared/data`, validated on Set5 "
             "(x4, PSNR on RGB with shave 4, tau 0 for flows). Wall times are as measured, on a machine that "
             "sometimes ran other work at the same time. No VGG19 ImageNet weights were available, so the "
             "latent modules were trained with `--perceptual none` (pixel L1 + 0.1 latent L1) instead of the "
             "paper's VGG loss; to retrain with it add `--perceptual vgg --vgg-weights vgg19-dcbb9e9d.pth "
             "--set loss.latent_weight=0 --set loss.pixel_weight=0` (LINF) or keep `latent_weight` 0.1 (SRFlow).", "",
             "| model | parameters | command | steps | wall time | final training loss | last validation |",
             "|---|---|---|---|---|---|---|"]
    for name in BUNDLED:
        run = Path(a.runs) / name
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        summary = json.loads((run / "summary.json").read_text())
        _, meta = read_checkpoint(run / "model.safetensors")
        model = (load_flow if cfg["task"] == "flow" else load_prior)(run / "model.safetensors")
        training = {**meta.get("training", {}), "recipe": f"configs/cpu/{name}.yaml",
                    "command": commands.get(name, ""), "data": cfg["data"]["train"]["folders"],
                    "final": last_row(run / "log.csv"), "validation": last_row(run / "val.csv") if (run / "val.csv").exists() else {},
                    "machine": f"{platform.machine()} CPU, torch {torch.__version__}"}
        dst = WEIGHTS / f"{name}.safetensors"
        (save_flow if cfg["task"] == "flow" else save_prior)(model, dst, training=training)
        n = sum(p.numel() for p in model.parameters())
        fin, val = training["final"], training["validation"]
        loss = ", ".join(f"{k} {float(fin[k]):.4g}" for k in ("nll", "l1", "latent") if fin.get(k))
        vals = f"PSNR {float(val['val_psnr']):.2f} dB, LR-PSNR {float(val['val_lr_psnr']):.2f} dB" if val else "–"
        lines.append(f"| `{name}` | {n / 1e6:.2f} M | `{training['command'] or 'flowsr-lp train-' + cfg['task'] + ' configs/cpu/' + name + '.yaml'}` "
                     f"| {summary['steps']} | {summary['seconds'] / 60:.1f} min | {loss} | {vals} |")
        print(f"{name}: {dst} ({dst.stat().st_size / 1e6:.2f} MB)")
    (WEIGHTS / "TRAINING.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
