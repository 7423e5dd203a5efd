"""Training throughput (iterations per second) of the two workloads the issue names:
  prior: full-size EDSR-baseline 3x3 LINF (frozen) + UNet latent module (dim 64), batch 4,
         LR 96x96 with 96x96 HR loss windows (FlowSR-LP's crops), VGG19 perceptual loss
         (random VGG weights: same cost as ImageNet's) - and without it;
  nll:   full-size EDSR-baseline 3x3 LINF, NLL, batch 16, LR 48x48, s ~ U(1, 4).
`python benchmarks/bench_training.py [--device cpu|cuda] [--steps 10] [--threads 2] [--amp none|bf16]`
Batches come from the real crop recipes over images held in memory (T91 from ../shared when
present, else scikit-image's photos); data loading is not timed."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from flowsr_lp.data.batches import EpochBatches
from flowsr_lp.data.crops import LINFCrops, LINFLPCrops
from flowsr_lp.data.folders import ImageFolder
from flowsr_lp.flows.linf import LINF, RELEASED as FLOWS
from flowsr_lp.nets.vgg import PerceptualLoss
from flowsr_lp.priors.linf_lp import LINFLatentModule, RELEASED as PRIORS
from flowsr_lp.train.objectives import FlowNLL, PriorObjective
from flowsr_lp.precision import hardware_line

SHARED = Path(os.environ.get("FLOWSR_LP_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def image_folder(tmp: Path) -> ImageFolder:
    t91 = SHARED / "data" / "T91" / "HR"
    if t91.is_dir():
        return ImageFolder([t91], repeat=20, cache=True, min_side=96)
    from skimage import data as sk
    from PIL import Image

    tmp.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate([sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket()]):
        Image.fromarray(img).save(tmp / f"{i}.png")
    return ImageFolder([tmp], repeat=50, cache=True)


def throughput(objective, params, batches, device, steps, amp="none"):
    opt = torch.optim.Adam(params, lr=1e-4)
    data = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in batches[i % len(batches)].items()}
            for i in range(steps + 2)]
    times = []
    for i, batch in enumerate(data):
        batch["step"] = i
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss, _ = objective(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t)
    return len(times) / sum(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--amp", default="none", choices=["none", "bf16"])
    ap.add_argument("--only", choices=["prior", "nll"], default=None)
    a = ap.parse_args()
    print("hardware:", hardware_line())
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    folder = image_folder(Path("/tmp/flowsr-lp-bench-images"))
    where = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                           f", {torch.get_num_threads()} threads")
    if a.only in (None, "prior"):
        flow = LINF(FLOWS["linf-patch-edsr-baseline"]).to(device)
        batches = EpochBatches(folder, LINFLPCrops(96, 96, 1.0, 4.0), batch_size=4, seed=0)
        for use_vgg in (True, False):
            torch.manual_seed(0)
            prior = LINFLatentModule(PRIORS["linf-lp-unet"]).to(device).train()
            percep = None
            if use_vgg:
                from torchvision.models import vgg19

                percep = PerceptualLoss(vgg19(weights=None).state_dict()).to(device)
            obj = PriorObjective(flow, prior, percep, 0.0, 0.0 if use_vgg else 1.0, a.amp).to(device)
            its = throughput(obj, prior.parameters(), batches, device, a.steps)
            print(f"latent-module training, batch 4, 96x96 HR windows, {'VGG19 perceptual' if use_vgg else 'pixel L1 (no VGG)'}"
                  f", amp {a.amp}: {its:.2f} it/s on {where}")
    if a.only in (None, "nll"):
        torch.manual_seed(0)
        flow = LINF(FLOWS["linf-patch-edsr-baseline"]).to(device).train()
        batches = EpochBatches(folder, LINFCrops(48, 1.0, 4.0), batch_size=16, seed=0)
        its = throughput(FlowNLL(flow), flow.parameters(), batches, device, a.steps)
        print(f"LINF NLL training, batch 16, LR 48x48, s ~ U(1, 4): {its:.2f} it/s on {where}")


if __name__ == "__main__":
    main()
