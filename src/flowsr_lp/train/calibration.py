"""Latent-module stages without steps, which measure statistics of training images:
- `stage: calibrate`: the BatchNorm statistics of a LINF-LP module with `scale_stats`
  (nets/scale_stats.py), measured at each of its scales on training crops of exactly that
  scale. Nothing is trained: the module runs in training mode, without gradients, and its
  layers' own running statistics are left as they were. Recipe: `prior: {checkpoint, config:
  {scale_stats: [...]}, calibration_batches: N}`, the crops' `lr_kernel` and `hr_size` in
  `data.crop`.
- `stage: correlate`: the residual correlation of a module with `residual_reach`
  (nets/residual_correlation.py), fitted in closed form to the standardised residuals
  (z* - mu) / sigma of whole training images (z* = the flow's encoding of the HR, the LR a
  bicubic (MATLAB) downscale) at one scale, or at each of the module's `residual_scales`.
  Recipe: `prior: {checkpoint, config: {residual_reach: R}, correlation_images: N,
  correlation_scale: S}`, or `config: {residual_reach: R, residual_scales: [...]}` without
  `correlation_scale`."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoints import CheckpointError, load_flow, save_prior
from ..data.batches import EpochBatches
from ..data.crops import LINFLPCrops, min_image_side
from ..data.folders import ImageFolder, find_images
from ..errors import TrainingError
from ..evaluate import Dataset, make_pair
from ..nets.scale_stats import batch_norms
from ..nets.residual_correlation import sum_moments
from ..pipeline import LearnedPrior, SuperResolver
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


def spread(files: list, n: int) -> list:
    """`n` of `files` spread evenly over the list (all of them when there are no more)."""
    return files if n >= len(files) else [files[k * len(files) // n] for k in range(n)]


@torch.no_grad()
def fit_residual_correlation(flow, prior, correlation, files: list, scale: float = 4.0, progress=None) -> int:
    """Fit `correlation` (the module's `residual`, or one scale's of it) to the standardised
    residuals (z* - mu) / sigma of `prior` on the whole HR images `files` at `scale` (LR made as
    `evaluate` makes it); returns how many positions it saw."""
    if not files:
        raise FileNotFoundError("no training images to fit the residual correlation on")
    device = next(prior.parameters()).device
    flow.eval()
    prior.eval()
    total = None
    for f in files:
        hr, lr, _ = make_pair(Path(f), Dataset("train", Path(f).parent, None), scale, "make")
        lr, ctx, (h, w) = flow.density_context(lr[None].to(device), tuple(hr.shape[-2:]))
        z, _ = flow.encode(hr[None, :, :h, :w].to(device), ctx)
        mu, log_sigma = LearnedPrior(prior).distribution(flow, lr, ctx)
        log_sigma = log_sigma if log_sigma is not None else [torch.zeros_like(m) for m in mu]
        total = sum_moments(total, correlation.moments([(zz - m) * torch.exp(-ls)
                                                        for zz, m, ls in zip(z, mu, log_sigma)]))
        if progress:
            progress()
    correlation.fit_(total)
    return int(total[0][3].item())


def run_calibration(cfg: dict, device: torch.device) -> Path:
    """The stage's run folder as a training run's: config.yaml, val.csv (one validation),
    model.safetensors with its record, summary.json (0 steps)."""
    spec, crop, out = cfg["prior"], cfg["data"]["crop"], Path(cfg["run"]["out"])
    t0 = time.perf_counter()
    try:
        flow = load_flow(cfg["flow"]["checkpoint"], device=device)
        prior = start_prior(spec, device)
        if cfg["stage"] == "correlate" and getattr(prior, "residual", None) is None:
            raise ValueError("stage: correlate needs a latent module with residual_reach > 0 "
                             "(prior.config.residual_reach)")
        if cfg["stage"] == "calibrate" and not getattr(prior.config, "scale_stats", ()):
            raise ValueError("stage: calibrate needs a LINF-LP module with scale_stats (prior.config.scale_stats)")
    except (CheckpointError, ValueError, TypeError) as e:
        raise TrainingError(f"prior: {e}") from None
    if cfg["stage"] == "correlate":
        targets = prior.residual.fitted(float(spec.get("correlation_scale", 4)))  # (scale, correlation) pairs
        files = spread(find_images(cfg["data"]["train"]["folders"]), int(spec.get("correlation_images", 60)))
        positions = 0
        with tqdm(total=len(files) * len(targets), desc="correlate", unit="image", disable=not progress_bars(),
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for scale, correlation in targets:
                try:
                    positions += fit_residual_correlation(flow, prior, correlation, files, scale, progress=bar.update)
                except (ValueError, FileNotFoundError, RuntimeError) as e:  # no images; a singular fit
                    raise TrainingError(f"correlate at x{scale:g}: {e}") from None
        reach = ", ".join(f"{r} (part {i})" if len(prior.residual.reach) > 1 else str(r)
                          for i, r in enumerate(prior.residual.reach))
        label = (f"residual correlation over channels and {reach} neighbouring position(s), fitted at "
                 f"{', '.join(f'x{s:g}' for s, _ in targets)} on {len(files)} images ({positions} positions)")
    else:
        n = int(spec.get("calibration_batches", 25))
        scales = prior.config.scale_stats
        with tqdm(total=n * len(scales), desc="calibrate", unit="batch", disable=not progress_bars(),
                  file=sys.stderr, dynamic_ncols=True) as bar:
            try:
                calibrate_scale_stats(flow, prior, cfg["data"]["train"]["folders"], n, cfg["optim"]["batch_size"],
                                      crop.get("lr_kernel", "pil"), int(crop.get("hr_size", HR_CROP)),
                                      cfg["run"]["seed"], progress=lambda s, b: bar.update())
            except (ValueError, FileNotFoundError) as e:  # crops larger than every image, a batch larger than the set
                raise TrainingError(f"calibrate: {e}") from None
        label = f"BatchNorm statistics at scales {', '.join(f'{s:g}' for s in scales)} ({n} batches each)"
    write_run_config(out, cfg, label)
    validate_once(out, cfg, device, SuperResolver(flow.eval(), prior.eval()))
    return export_run(out, save_prior, prior.eval(), cfg, label, 0, time.perf_counter() - t0, 0)
