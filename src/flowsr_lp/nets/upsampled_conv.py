"""A 3x3 convolution over a nearest-upsampled map, computed at the map's own size.

Nearest x r upsampling repeats every cell r x r times. A 3x3 window over the upsampled map
then covers at most 2 x 2 distinct cells, and which ones depends only on the output pixel's
phase (its place in its r x r block). Adding up the kernel taps that fall on the same cell
gives, per phase, a 2 x 2 kernel over the small map: 4 multiply-adds per output pixel and
input channel instead of 9, and the same sums up to rounding. SRFlow's condition at HR/2 is
such a map (the RRDB's tapped features, nearest-upsampled x2, next to the fine `fea_up2`):
its coupling convolutions are about half of SRFlow's work.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def _phase_taps(r: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """For each phase a of r: a 2 x 3 0/1 matrix summing the kernel rows (taps -1, 0, +1)
    that read the same cell, and the phase's window start (0: cells i-1, i; 1: cells i, i+1)."""
    taps = torch.zeros(r, 2, 3)
    starts = tuple(1 if a == r - 1 else 0 for a in range(r))
    for a in range(r):
        for k, d in enumerate((-1, 0, 1)):
            taps[a, (a + d) // r - starts[a] + 1, k] = 1
    return taps, starts


def phase_kernels(weight: torch.Tensor, r: int) -> torch.Tensor:
    """A 3x3 kernel (O x I x 3 x 3) -> the r*r phases' 2x2 kernels (r*r*O x I x 2 x 2)."""
    if r < 2 or weight.shape[-2:] != (3, 3):
        raise ValueError(f"needs a 3x3 kernel and a factor of at least 2, got {tuple(weight.shape)} and {r}")
    taps = _phase_taps(r)[0].to(weight)
    rows = torch.tensordot(taps, weight, dims=([2], [2]))  # a, t, O, I, 3: kernel rows summed per row phase
    both = torch.tensordot(rows, taps, dims=([4], [2]))  # a, t, O, I, b, s: and columns per column phase
    return both.permute(0, 4, 2, 3, 1, 5).reshape(r * r * weight.shape[0], weight.shape[1], 2, 2)


def conv_phases(x: torch.Tensor, kernels: torch.Tensor, r: int) -> torch.Tensor:
    """The convolution of nearest_up(x, r) given `phase_kernels` of its 3x3 kernel; the
    output is channels-last in memory."""
    b, _, h, w = x.shape
    o = kernels.shape[0] // (r * r)
    starts = _phase_taps(r)[1]
    y = F.conv2d(x, kernels, padding=1).unflatten(1, (r, r, o))  # B x r x r x O x (h+1) x (w+1)
    out = y.new_empty(b, h, r, w, r, o)
    for a, ta in enumerate(starts):
        for c, tc in enumerate(starts):
            out[:, :, a, :, c] = y[:, a, c, :, ta : ta + h, tc : tc + w].permute(0, 2, 3, 1)
    return out.view(b, h * r, w * r, o).permute(0, 3, 1, 2)


def conv3x3_nearest_up(x: torch.Tensor, weight: torch.Tensor, r: int) -> torch.Tensor:
    """`F.conv2d(F.interpolate(x, scale_factor=r, mode="nearest"), weight, padding=1)` for a
    3x3 `weight` (no bias) and an integer r >= 2, computed at x's size."""
    return conv_phases(x, phase_kernels(weight, r), r)


@dataclass
class UpsampledConcat:
    """The map `cat([fine, nearest_up(coarse, factor)], 1)`, kept as its two parts so a 3x3
    convolution over it costs the fine part's convolution plus the coarse part's at the
    coarse size (`conv3x3`). `materialize()` gives the map itself."""

    fine: torch.Tensor
    coarse: torch.Tensor
    factor: int

    @property
    def dtype(self) -> torch.dtype:
        return self.fine.dtype

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.fine.shape[0], self.fine.shape[1] + self.coarse.shape[1], *self.fine.shape[2:]))

    def to(self, dtype: torch.dtype) -> "UpsampledConcat":
        return UpsampledConcat(self.fine.to(dtype), self.coarse.to(dtype), self.factor)

    def materialize(self) -> torch.Tensor:
        return torch.cat([self.fine, F.interpolate(self.coarse, scale_factor=self.factor, mode="nearest")], 1)


def conv3x3_kernels(x: torch.Tensor | UpsampledConcat, weight: torch.Tensor):
    """What `conv3x3` needs of a 3x3 kernel for a map like x, in x's dtype (derive once,
    reuse per map). The phase kernels' sums are taken in the weight's precision, then cast."""
    if isinstance(x, torch.Tensor):
        return weight.to(x.dtype)
    n = x.fine.shape[1]
    return weight[:, :n].to(x.dtype), phase_kernels(weight[:, n:], x.factor).to(x.dtype)


def conv3x3(x: torch.Tensor | UpsampledConcat, kernels) -> torch.Tensor:
    """A 3x3 convolution ("same" zero padding, no bias) of a map or an `UpsampledConcat`,
    given `conv3x3_kernels(x, weight)`."""
    if isinstance(x, torch.Tensor):
        return F.conv2d(x, kernels, padding=1)
    fine, phases = kernels
    return F.conv2d(x.fine, fine, padding=1).add_(conv_phases(x.coarse, phases, x.factor))


def layout(x: torch.Tensor | UpsampledConcat) -> tuple:
    """What the kernels of `conv3x3_kernels` depend on besides the weight."""
    return (x.shape[1], x.dtype) if isinstance(x, torch.Tensor) else (x.fine.shape[1], x.factor, x.dtype)
