"""PSNR / SSIM exactly as the papers we compare with compute them.

Small protocol details move the numbers by more than the differences being reported, so each
variant is explicit:

* LINF benchmarks: ``psnr(sr, hr, shave=scale, y_channel=True)`` - Y is taken from the RGB
  *difference* with BT.601 coefficients [65.738, 129.057, 25.064] / 256 (no +16 offset, no
  rounding); DIV2K validation: ``psnr(sr, hr, shave=scale)`` on RGB.
* LINF SSIM: ``ssim(sr, hr, kind="matlab")`` - 11x11 Gaussian (sigma 1.5), 'valid' filtering,
  on x * 255 floats (not rounded), mean over the three channels.
* SRFlow's Measure: images first become uint8 (``to_uint8_like_srflow``), then
  ``psnr`` on full RGB and ``ssim(kind="skimage")`` (skimage ``structural_similarity``
  defaults: 7x7 uniform window, sample covariance, data range 255, channel mean).

All functions take B x C x H x W (or C x H x W) tensors, either float in [0, 1] or uint8
in [0, 255], compute in float64 and return a float64 tensor of shape (B,).
"""
from __future__ import annotations

import math
import numbers

import torch

from ..data.resize import imresize
from ..precision import to_float64

_Y_COEFFS = (65.738 / 256, 129.057 / 256, 25.064 / 256)


def _pair_batches(sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if sr.dim() == 3:
        sr, hr = sr[None], hr[None]
    if sr.dim() != 4:
        raise ValueError(f"expected B x C x H x W or C x H x W tensors, got shape {tuple(sr.shape)}")
    return sr, hr


def _unit(x: torch.Tensor) -> torch.Tensor:
    """float64 in [0, 1] units (uint8 is divided by 255)."""
    return to_float64(x) / 255.0 if x.dtype == torch.uint8 else to_float64(x)


def _255(x: torch.Tensor) -> torch.Tensor:
    """float64 in [0, 255] units (uint8 kept as its integer values, floats multiplied by 255)."""
    return to_float64(x) if x.dtype == torch.uint8 else to_float64(x) * 255.0


def to_uint8_like_srflow(x: torch.Tensor, rounding: str = "floor") -> torch.Tensor:
    """Quantise [0, 1] floats to a uint8 tensor the way SRFlow's test script does before its
    Measure: clip to [0, 1], * 255, then truncate (numpy ``astype(uint8)`` = floor here).

    ``rounding="round"`` (half to even) is offered because the shipped reference pair
    (``sr_uint8`` in metrics.vectors.pt) was made with rounding; on that pair the two give
    PSNRs 0.009 dB apart, so say which one a table used.
    """
    y = to_float64(x.detach()).clamp(0.0, 1.0) * 255.0
    if rounding == "floor":
        y = torch.floor(y)
    elif rounding == "round":
        y = torch.round(y)
    else:
        raise ValueError(f"rounding must be 'floor' or 'round', got {rounding!r}")
    return y.to(torch.uint8)


def psnr(sr: torch.Tensor, hr: torch.Tensor, shave: int = 0, y_channel: bool = False) -> torch.Tensor:
    """PSNR in dB with peak 1 (i.e. 255 for uint8 input), per image; inf for identical images.

    ``shave`` crops that many pixels from every border first (SR papers shave ``scale``).
    ``y_channel`` uses LINF's difference-based luma (see module docstring).
    """
    sr, hr = _pair_batches(sr, hr)
    diff = _unit(sr) - _unit(hr)
    if y_channel:
        if diff.shape[1] != 3:
            raise ValueError(f"y_channel needs 3 RGB channels, got {diff.shape[1]}")
        coeffs = torch.tensor(_Y_COEFFS, dtype=diff.dtype, device=diff.device).view(1, 3, 1, 1)
        diff = (diff * coeffs).sum(dim=1, keepdim=True)
    if shave:
        if 2 * shave >= min(diff.shape[-2:]):
            raise ValueError(f"shave={shave} removes the whole {tuple(diff.shape[-2:])} image")
        diff = diff[..., shave:-shave, shave:-shave]
    mse = diff.pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


def _filter_valid(x: torch.Tensor, k: list[float]) -> torch.Tensor:
    """Separable 'valid' filtering of the last two dims with the 1-D kernel k, as in-place sums
    of shifted slices (faster than float64 conv2d on the CPU: benchmarks/README.md)."""
    n = len(k)
    h, w = x.shape[-2:]
    if h < n or w < n:
        raise ValueError(f"image {h}x{w} is smaller than the {n}x{n} SSIM window")
    rows = x[..., : h - n + 1, :] * k[0]
    for i in range(1, n):
        rows.add_(x[..., i : h - n + 1 + i, :], alpha=k[i])
    out = rows[..., : w - n + 1] * k[0]
    for i in range(1, n):
        out.add_(rows[..., i : w - n + 1 + i], alpha=k[i])
    return out


def ssim(sr: torch.Tensor, hr: torch.Tensor, kind: str = "matlab") -> torch.Tensor:
    """Mean SSIM per image (channel-averaged), on the [0, 255] scale (K1=0.01, K2=0.03, L=255).

    ``kind="matlab"``: 11x11 Gaussian window, sigma 1.5, population statistics (LINF).
    ``kind="skimage"``: 7x7 uniform window with sample covariance (x 49/48), as skimage's
    ``structural_similarity`` defaults - whose reflect-padded borders it crops away, which
    equals 'valid' filtering (SRFlow). It works on the inputs as given; SRFlow's protocol
    feeds it uint8 images, so pass ``to_uint8_like_srflow(x)`` to reproduce its numbers.
    """
    sr, hr = _pair_batches(sr, hr)
    x, y = _255(sr), _255(hr)
    if kind == "matlab":
        g = [math.exp(-(i * i) / (2 * 1.5**2)) for i in range(-5, 6)]
        k, cov_norm = [v / sum(g) for v in g], 1.0
    elif kind == "skimage":
        k, cov_norm = [1.0 / 7] * 7, 49.0 / 48.0
    else:
        raise ValueError(f"kind must be 'matlab' or 'skimage', got {kind!r}")
    mx, my = _filter_valid(x, k), _filter_valid(y, k)
    vx = cov_norm * (_filter_valid(x * x, k) - mx * mx)
    vy = cov_norm * (_filter_valid(y * y, k) - my * my)
    vxy = cov_norm * (_filter_valid(x * y, k) - mx * my)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


def _downscale_factors(sr_hw, lr_hw, scale) -> tuple[float, float]:
    """Per-axis factors taking ``sr`` to ``lr``'s size: the nominal 1/scale where the sizes
    are exact multiples (integer scales on modcropped images: the official protocol, bit for
    bit), else the real ratio lr/sr (a non-integer scale's LR has a rounded size)."""
    scales = tuple(scale) if isinstance(scale, (tuple, list)) else (scale, scale)
    if len(scales) != 2 or not all(isinstance(s, numbers.Real) and not isinstance(s, bool)
                                   and math.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"scale must be a positive number or (sh, sw), got {scale!r}")
    out = []
    for n_sr, n_lr, s in zip(sr_hw, lr_hw, scales):
        if abs(n_sr / s - n_lr) > 1:
            raise ValueError(f"sr size {tuple(sr_hw)} is not lr size {tuple(lr_hw)} times the scale {scale}")
        out.append(1.0 / s if n_lr * s == n_sr else n_lr / n_sr)
    return out[0], out[1]


def lr_psnr(sr: torch.Tensor, lr: torch.Tensor, scale: float | tuple[float, float],
            shave: int | None = None) -> torch.Tensor:
    """LR-consistency PSNR: downscale ``sr`` to ``lr``'s size with MATLAB bicubic and compare
    with ``lr`` on RGB. A perfectly consistent SR output scores inf. ``scale`` is a number or
    (sh, sw); at non-integer scales the LR size was rounded, so the real size ratio is used
    (see ``_downscale_factors``). ``shave=None`` means 0: the LR image has no border the SR
    model could not see.
    """
    if sr.dim() != lr.dim() or sr.shape[:-2] != lr.shape[:-2]:
        raise ValueError(f"shape mismatch: sr {tuple(sr.shape)} vs lr {tuple(lr.shape)}")
    factors = _downscale_factors(sr.shape[-2:], lr.shape[-2:], scale)
    down = imresize(_unit(sr), scale=factors, out_size=tuple(lr.shape[-2:]))
    return psnr(down, _unit(lr), shave=shave or 0)
