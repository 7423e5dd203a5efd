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
