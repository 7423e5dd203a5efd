"""GPU smoke test of the training path the CPU cannot exercise: `train-prior` on CUDA with
bf16 autocast and channels_last, through the CLI, on a tiny flow and scikit-image photos.
`python benchmarks/gpu_smoke.py OUT_DIR` (needs a CUDA device)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch
import yaml
from PIL import Image

from flowsr_lp import save_flow
from flowsr_lp.cli import main as cli
from flowsr_lp.flows.linf import LINF, LINFConfig
from flowsr_lp.precision import hardware_line


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-smoke")
    print("hardware:", hardware_line())
    assert torch.cuda.is_available(), "needs a CUDA device"
    from skimage import data as sk

    imgs = out / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate([sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket()]):
        Image.fromarray(img).save(imgs / f"{i}.png")
    torch.manual_seed(0)
    flow = LINF(LINFConfig(encoder="edsr-baseline", encoder_args={"n_resblocks": 4, "n_feats": 32}, patch_size=3,
                           hidden_dim=64, flow_layers=4))
    ckpt = save_flow(flow, out / "flow.safetensors")
    recipe = {"task": "prior", "flow": {"checkpoint": str(ckpt)},
              "prior": {"family": "linf-lp", "config": {"generator": "unet", "dim": 32}},
              "data": {"train": {"folders": [str(imgs)], "repeat": 50, "cache": True},
                       "crop": {"kind": "linf-lp", "lr_size": 48, "window": 48}},
              "optim": {"batch_size": 8, "iterations": 60, "lr": 1e-3}, "loss": {"perceptual": "none"},
              "run": {"out": str(out / "run"), "amp": "bf16", "channels_last": True, "device": "cuda",
                      "log_every": 10, "workers": 2}}
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code = cli(["train-prior", str(out / "recipe.yaml")])
    rows = list(csv.DictReader(open(out / "run" / "log.csv")))
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    print(f"train-prior on {torch.cuda.get_device_name()}: exit {code}, loss {first:.4f} -> {last:.4f}, "
          f"{rows[-1]['it_s']} it/s, skipped {rows[-1]['skipped']}")
    return 0 if code == 0 and last < first else 1


if __name__ == "__main__":
    raise SystemExit(main())
