"""Large images in tiles: the LR image is cut into tiles, each upscaled with `margin` LR
pixels of context on every side (dropped afterwards), and the HR crops are written into
one output. Memory then depends on the tile size, not on the image: a 1024x1024 LR at x4
(a 4096x4096 output) with LINF-LP stays under 4 GB. A progress bar counts the tiles.

Tiles start on multiples of a unit chosen so that each tile's HR grid (and LINF's 3x3
patch grid) lines up with the whole image's, so away from the margins a tile computes the
same values as the whole image (the latent module, which sees further, gives close values;
sampling draws each tile's noise in turn from one generator)."""
from __future__ import annotations

import logging
from fractions import Fraction

import torch
from tqdm import tqdm

from .errors import UsageError
from .pipeline import SRResult, SuperResolver, TemperatureSampling, finite_mask

log = logging.getLogger(__name__)


def release_cached_memory() -> None:
    """After an out-of-memory: hand the blocks PyTorch's CUDA allocator keeps cached back to
    the device before retrying smaller (a no-op without CUDA)."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def tile_unit(scale: float, patch: int = 1, lr_multiple: int = 1, limit: int = 64) -> int:
    """The smallest LR step u (a multiple of `lr_multiple`) with u * scale a whole number of
    HR patches."""
    s = Fraction(scale).limit_denominator(1000)
    for u in range(lr_multiple, limit + 1, lr_multiple):
        hr = u * s
        if hr.denominator == 1 and hr.numerator % patch == 0:
            return u
    raise UsageError(f"scale {scale:g} cannot be tiled (no LR step up to {limit} maps to whole HR patches); "
                     "upscale the image whole or use a scale like 2, 3, 4")


def flow_tile_unit(flow, scale: float) -> int:
    """`tile_unit` for a flow: LINF's patches stay aligned, SRFlow's LR tiles stay even."""
    patch = getattr(getattr(flow, "config", None), "patch_size", 1)
    return tile_unit(scale, patch, lr_multiple=2 if getattr(flow, "fixed_scale", None) is not None else 1)


#: LR images with more pixels than this are upscaled in tiles by the command line
TILE_ABOVE_LR_PIXELS = 512 * 512


def batch_limit(lr_hw: tuple[int, int], batch_size: int) -> int:
    """How many images of this LR size run together: at most `batch_size`, and at most as
    many LR pixels as the largest image upscaled whole (`TILE_ABOVE_LR_PIXELS`), so a batch
    needs no more memory than one such image."""
    return max(1, min(batch_size, TILE_ABOVE_LR_PIXELS // (lr_hw[0] * lr_hw[1])))


def tile_scale(resolver: SuperResolver, lr: torch.Tensor, size: tuple[int, int],
               above: int | None = None) -> float | None:
    """The scale to upscale `lr` to `size` in tiles with, when the image is larger than
    `above` LR pixels and tiling can reproduce the size exactly; else None (upscale whole)."""
    h, w = lr.shape[-2:]
    if h * w <= (TILE_ABOVE_LR_PIXELS if above is None else above) or size[0] * w != size[1] * h:
        return None
    scale = size[0] / h
    try:
        flow_tile_unit(resolver.flow, scale)
    except UsageError:
        return None
    return scale if Fraction(scale).limit_denominator(1000) * h == size[0] else None


def tiled_result(resolver: SuperResolver, lr: torch.Tensor, scale: float, strategy) -> SRResult:
    """`upscale_tiled` as the `SRResult` of a whole-image `generate`."""
    sr = upscale_tiled(resolver, lr, scale, strategy=strategy)
    return SRResult(sr, finite_mask(sr), strategy)


def _round_to(x: int, unit: int) -> int:
    return max(unit, x // unit * unit)


@torch.no_grad()
def upscale_tiled(resolver: SuperResolver, lr: torch.Tensor, scale: float | None = None, *, tile: int = 256,
                  margin: int = 32, strategy=None, progress: bool | None = None) -> torch.Tensor:
    """LR (B x 3 x h x w in [0, 1]) -> raw SR (B x 3 x h*s x w*s, on the CPU), computed in
    LR tiles of `tile` pixels with `margin` pixels of context. The tiles are gathered on the
    model's device and copied to the CPU once (one wait for the GPU, not one per tile).
    `progress`: a tqdm bar over the tiles (None: only on a terminal)."""
    flow = resolver.flow
    fixed = getattr(flow, "fixed_scale", None)
    scale = scale if scale is not None else fixed
    if scale is None:
        raise UsageError("give a scale")
    if fixed is not None and scale != fixed:
        raise UsageError(f"this flow upscales x{fixed} only, got scale {scale:g}")
    unit = flow_tile_unit(flow, scale)
    tile, margin = _round_to(tile, unit), -(-margin // unit) * unit
    b, _, h, w = lr.shape
    s = Fraction(scale).limit_denominator(1000)
    H, W = int(h * s), int(w * s)
    if (H, W) != (h * scale, w * scale):
        raise UsageError(f"a {h}x{w} LR at scale {scale:g} has no whole-pixel output; crop the LR to a multiple of {unit}")
    strategy = strategy or resolver.strategy
    if isinstance(strategy, TemperatureSampling) and strategy.generator is None:
        # one stream for all tiles: the same seed on every tile would repeat the noise
        gen = torch.Generator().manual_seed(strategy.seed) if strategy.seed is not None else None
        strategy = TemperatureSampling(strategy.tau, generator=gen)
    rows, cols = range(0, h, tile), range(0, w, tile)
    out = torch.empty(b, 3, H, W, device=resolver.device)
    bar = tqdm(total=len(rows) * len(cols), desc="tiles", unit="tile", disable=None if progress is None else not progress)
    for r in rows:
        for c in cols:
            th, tw = min(tile, h - r), min(tile, w - c)
            r0, c0 = max(0, r - margin), max(0, c - margin)
            r1, c1 = min(h, r + th + margin), min(w, c + tw + margin)
            sr = resolver.generate(resolver.prepare(lr[..., r0:r1, c0:c1], scale=scale), strategy).images
            top, left = int((r - r0) * s), int((c - c0) * s)
            hh, ww = int(th * s), int(tw * s)
            out[..., int(r * s) : int(r * s) + hh, int(c * s) : int(c * s) + ww] = \
                sr[..., top : top + hh, left : left + ww]
            bar.update()
    bar.close()
    return out.cpu()
