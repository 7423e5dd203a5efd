"""Metrics for generative SR that PSNR does not see: exploding-inverse rate, diversity over
samples, and a grid-artifact score."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from ..precision import to_float64


def inf_rate(outputs: Iterable[torch.Tensor]) -> float:
    """Share of runs (each a decoded SR image or batch, *before* clamping) with any
    non-finite value: the paper's %Inf divided by 100."""
    flags = [bool((~torch.isfinite(o)).any()) for o in outputs]
    if not flags:
        raise ValueError("inf_rate needs at least one output")
    return sum(flags) / len(flags)


def diversity(samples: torch.Tensor) -> torch.Tensor:
    """samples: N x B x 3 x H x W (N draws for the same inputs) -> (B,) mean over pixels of
    the per-pixel standard deviation across draws (0 for a deterministic method)."""
    if samples.shape[0] < 2:
        return torch.zeros(samples.shape[1], dtype=torch.float64)
    return to_float64(samples).std(0).flatten(1).mean(1)


def grid_residual(sr: torch.Tensor, lr: torch.Tensor | None) -> torch.Tensor:
    """What `grid_score` scores, in float64: sr minus the bilinear upsampling of `lr` (the
    part the flow generates), or sr itself without `lr`."""
    x = to_float64(sr)
    if lr is None:
        return x
    return x - F.interpolate(to_float64(lr), size=sr.shape[-2:], mode="bilinear", align_corners=False)


def grid_score(sr: torch.Tensor, lr: torch.Tensor | None = None, period: int = 3) -> torch.Tensor:
    """Grid artifacts: how many gray levels (of 255) more the image jumps between
    neighbouring pixels across the borders of a `period`-pixel patch grid than between
    neighbours inside the patches.

    Computed on the residual against the bilinear upsampling of `lr` (the part the flow
    generates), or on the image itself without `lr`:
    score = 255 * (mean |x[i+1] - x[i]| over pairs straddling a border (i = k*period - 1)
                   - mean |x[i+1] - x[i]| over pairs inside a patch), rows and columns together.
    Images without a grid - natural photos, smooth images, per-pixel noise - score about 0;
    independently sampled 3x3 patches score well above (see tests). A difference, not a
    ratio: a ratio would score a noisy image with strong seams near 1 (its inside jumps are
    large too) and a smooth image with faint seams high. B x 3 x H x W in [0, 1] -> (B,)."""
    x = grid_residual(sr, lr)
    border, inner = [], []
    for dim in (-1, -2):
        d = x.diff(dim=dim).abs()
        idx = torch.arange(d.shape[dim], device=d.device)
        at_border = (idx % period) == period - 1
        sel = (lambda m: d[..., m]) if dim == -1 else (lambda m: d[..., m, :])
        border.append(sel(at_border).flatten(1))
        inner.append(sel(~at_border).flatten(1))
    return 255.0 * (torch.cat(border, 1).mean(1) - torch.cat(inner, 1).mean(1))


def sr_space_diversity(samples: torch.Tensor, hr: torch.Tensor, scale: int, distance_map) -> float:
    """The diversity score of the NTIRE "Learning the super-resolution space" challenge for one
    image: `samples` N x 3 x H' x W' (N SR draws in [0, 1]), `hr` 3 x H x W or 1 x 3 x H x W.

    1. The HR is cropped to a multiple of `scale`, each sample to the HR's size.
    2. `distance_map(sr, hr)` gives a spatial distance map (LPIPS-AlexNet in the challenge;
       B x 1 x H x W or B x H x W) per sample, on images in [-1, 1].
    3. global = min over samples of each map's mean; 4. local = mean over pixels of the
       per-pixel min over samples; 5. score = (global - local) / global * 100."""
    if samples.dim() != 4 or samples.shape[0] < 2:
        raise ValueError(f"the SR-space diversity needs N >= 2 samples as N x 3 x H x W, got {tuple(samples.shape)}")
    hr = hr if hr.dim() == 4 else hr[None]
    H, W = hr.shape[-2] - hr.shape[-2] % scale, hr.shape[-1] - hr.shape[-1] % scale
    gt = hr[..., :H, :W]
    sr = samples[..., :H, :W]
    maps = distance_map(sr * 2 - 1, gt.expand(len(sr), -1, -1, -1) * 2 - 1)
    maps = to_float64(maps.detach()).reshape(len(sr), -1)
    global_best = maps.mean(1).min()
    local_best = maps.min(0).values.mean()
    return float((global_best - local_best) / global_best * 100)
