"""A latent-module stage without steps: the BatchNorm statistics of a LINF-LP module with
`scale_stats` (nets/scale_stats.py), measured at each of its scales on training crops of
exactly that scale. Nothing is trained: the module runs in training mode, without gradients,
and its layers' own running statistics are left as they were. Recipe: `stage: calibrate`,
`prior: {checkpoint, config: {scale_stats: [...]}, calibration_batches: N}`, the crops'
`lr_kernel` and `hr_size` in `data.crop`."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoints import CheckpointError, load_flow, save_prior
from ..data.batches import EpochBatches
from ..data.crops import LINFLPCrops, min_image_side
from ..data.folders import ImageFolder
from ..errors import TrainingError
from ..nets.scale_stats import batch_norms
from ..pipeline import SuperResolver
from ..runtime import progress_bars
from .start import start_prior
from .trainer import export_run, validate_once, write_run_config

#: the HR crop side calibration aims at: as large as BSDS200's images (481 x 321) allow,
#: since statistics of small crops (a few positions deep in the UNet) do not carry over to
#: whole images
HR_CROP = 320


@torch.no_grad()
def calibrate_scale_stats(flow, prior, folders: list[str], batches: int, batch_size: int, lr_kernel: str = "pil",
                          hr_crop: int = HR_CROP, seed: int = 0, progress=None) -> None:
    """Fill `prior.scale_stats` (and each specialist's) with plain averages over `batches`
    batches per scale (fewer where the images run out), replacing what it held. Each scale's
    crops have an LR side that is a multiple of 6 (so at scales 1, 1.5, 2, 3, ... the HR side
    is a multiple of 3 and the module reads the scale exactly) and an HR side of at most
    `hr_crop`."""
    if not getattr(prior.config, "scale_stats", ()):
        raise ValueError("calibration needs a latent module with scale_stats")
    layers = batch_norms(prior)
    device = next(prior.parameters()).device
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers]
    flow.eval()
    prior.train()
    for m in prior.members():  # a fresh measurement, not an average with earlier ones
        m.scale_stats.counts.zero_()
    for m in layers:
        m.momentum = None  # plain averages (ScaleStats follows the layer's momentum)
    try:
        for s in prior.config.scale_stats:
            lr_size = 6 * int(hr_crop / s // 6)
            if lr_size < 6:
                raise ValueError(f"hr_crop {hr_crop} is too small for scale {s}")
            crops = LINFLPCrops(lr_size=lr_size, window=None, scale_min=s, scale_max=s, lr_kernel=lr_kernel)
            images = ImageFolder(folders, repeat=1, cache=True, min_side=min_image_side(crops))
            epoch = EpochBatches(images, crops, batch_size, seed)
            for b in range(min(batches, len(epoch))):
                batch = epoch[b]
                lr = batch["lr"].to(device)
                ctx = flow.condition(lr, tuple(batch["hr"].shape[-2:]))
                (z0,) = flow.initial_prior(lr, ctx, prior.config.initial_prior)
                for m in prior.members():  # each one at every scale
                    m.own_prediction(z0, lr)
                if progress:
                    progress(s, b)
    finally:
        prior.eval()
        for m, (mom, mean, var, n) in zip(layers, saved):
            m.momentum = mom
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)


def run_calibration(cfg: dict, device: torch.device) -> Path:
    """The stage's run folder as a training run's: config.yaml, val.csv (one validation),
    model.safetensors with its record, summary.json (0 steps)."""
    spec, crop, out = cfg["prior"], cfg["data"]["crop"], Path(cfg["run"]["out"])
    t0 = time.perf_counter()
    try:
        flow = load_flow(cfg["flow"]["checkpoint"], device=device)
        prior = start_prior(spec, device)
        if not getattr(prior.config, "scale_stats", ()):
            raise ValueError("stage: calibrate needs a LINF-LP module with scale_stats (prior.config.scale_stats)")
    except (CheckpointError, ValueError, TypeError) as e:
        raise TrainingError(f"prior: {e}") from None
    n = int(spec.get("calibration_batches", 25))
    scales = prior.config.scale_stats
    with tqdm(total=n * len(scales), desc="calibrate", unit="batch", disable=not progress_bars(), file=sys.stderr,
              dynamic_ncols=True) as bar:
        try:
            calibrate_scale_stats(flow, prior, cfg["data"]["train"]["folders"], n, cfg["optim"]["batch_size"],
                                  crop.get("lr_kernel", "pil"), int(crop.get("hr_size", HR_CROP)), cfg["run"]["seed"],
                                  progress=lambda s, b: bar.update())
        except (ValueError, FileNotFoundError) as e:  # crops larger than every image, a batch larger than the set
            raise TrainingError(f"calibrate: {e}") from None
    label = f"BatchNorm statistics at scales {', '.join(f'{s:g}' for s in scales)} ({n} batches each)"
    write_run_config(out, cfg, label)
    validate_once(out, cfg, device, SuperResolver(flow.eval(), prior.eval()))
    return export_run(out, save_prior, prior.eval(), cfg, label, 0, time.perf_counter() - t0, 0)
