"""Where the tiles of a tiled upscale lie (`SuperResolver(tile=...)` runs them).

An LR image is cut into tiles of `tile` LR pixels; each is computed with `margin` LR pixels of
context on every side, which are dropped afterwards. Tiles start on multiples of a unit
chosen so that each tile's HR grid (and LINF's 3x3 patch grid) lines up with the whole
image's, and every latent part of a tile is then a window of the whole image's latent:
latent position = LR position * the part's `factor`."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator

import torch

from .errors import UsageError

#: `tile="auto"` upscales LR images with more pixels than this in tiles of `AUTO_TILE`
TILE_ABOVE_LR_PIXELS = 512 * 512
#: the tile side (LR pixels) of `tile="auto"` and of the out-of-memory retries
AUTO_TILE = 256


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
                     "upscale the image whole (tile='off') or use a scale like 2, 3, 4")


def flow_tile_unit(flow, scale: float) -> int:
    """`tile_unit` for a flow: LINF's patches stay aligned, SRFlow's LR tiles stay even."""
    patch = getattr(getattr(flow, "config", None), "patch_size", 1)
    return tile_unit(scale, patch, lr_multiple=2 if getattr(flow, "fixed_scale", None) is not None else 1)


def batch_limit(lr_hw: tuple[int, int], batch_size: int) -> int:
    """How many images of this LR size run together: at most `batch_size`, and at most as
    many LR pixels as the largest image upscaled whole (`TILE_ABOVE_LR_PIXELS`), so a batch
    needs no more memory than one such image."""
    return max(1, min(batch_size, TILE_ABOVE_LR_PIXELS // (lr_hw[0] * lr_hw[1])))


def tiled_scale(lr_hw: tuple[int, int], size: tuple[int, int]) -> Fraction | None:
    """The scale at which tiles reproduce an `lr_hw` -> `size` upscale: the same whole-pixel
    ratio on both axes, or None."""
    s = Fraction(size[0], lr_hw[0])
    return s if s == Fraction(size[1], lr_hw[1]) and s.limit_denominator(1000) == s else None


@dataclass(frozen=True)
class Tile:
    """Rows [r0, r1) x columns [c0, c1) of the LR are computed; of their output, the part
    from LR rows [r, r + h) x columns [c, c + w) is kept."""

    r0: int
    r1: int
    c0: int
    c1: int
    r: int
    h: int
    c: int
    w: int


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one LR size at one scale, and where each latent part of a tile lies in
    the whole image's latent (`factors`: latent positions per LR pixel, one per part;
    `shapes`: the whole latent's shapes at batch 1)."""

    lr_hw: tuple[int, int]
    scale: Fraction
    tile: int
    margin: int
    factors: tuple[Fraction, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __iter__(self) -> Iterator[Tile]:
        (h, w), t, m = self.lr_hw, self.tile, self.margin
        for r in range(0, h, t):
            for c in range(0, w, t):
                th, tw = min(t, h - r), min(t, w - c)
                yield Tile(max(0, r - m), min(h, r + th + m), max(0, c - m), min(w, c + tw + m), r, th, c, tw)

    def __len__(self) -> int:
        return -(-self.lr_hw[0] // self.tile) * -(-self.lr_hw[1] // self.tile)

    def hr(self, t: Tile) -> tuple[tuple[int, int], tuple[slice, slice], tuple[slice, slice]]:
        """(HR size of the computed region, the kept part in it, where that part goes in the whole HR)."""
        s = self.scale
        top, left = int((t.r - t.r0) * s), int((t.c - t.c0) * s)
        hh, ww = int(t.h * s), int(t.w * s)
        r, c = int(t.r * s), int(t.c * s)
        return ((int((t.r1 - t.r0) * s), int((t.c1 - t.c0) * s)),
                (slice(top, top + hh), slice(left, left + ww)), (slice(r, r + hh), slice(c, c + ww)))

    def region(self, t: Tile, part: int) -> tuple[slice, slice]:
        """The latent window of part `part` that the computed region of `t` decodes."""
        f, (H, W) = self.factors[part], self.shapes[part][-2:]
        return slice(int(t.r0 * f), _end(t.r1, self.lr_hw[0], f, H)), slice(int(t.c0 * f), _end(t.c1, self.lr_hw[1], f, W))

    def kept(self, t: Tile, part: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """(the kept window of part `part` inside the region's latent, the same window in the whole latent)."""
        f, (H, W) = self.factors[part], self.shapes[part][-2:]
        r0, c0 = int(t.r * f), int(t.c * f)
        r1, c1 = _end(t.r + t.h, self.lr_hw[0], f, H), _end(t.c + t.w, self.lr_hw[1], f, W)
        top, left = r0 - int(t.r0 * f), c0 - int(t.c0 * f)
        return ((slice(top, top + r1 - r0), slice(left, left + c1 - c0)), (slice(r0, r1), slice(c0, c1)))


def _end(stop: int, n: int, f: Fraction, whole: int) -> int:
    """A latent window's end: stop * f inside the image, the whole latent's end at its edge
    (where the last latent rows may cover padding)."""
    return whole if stop == n else int(stop * f)


def tile_grid(shapes_of: Callable[[tuple[int, int]], list[tuple[int, ...]]], unit: int, lr_hw: tuple[int, int],
              scale: Fraction, tile: int, margin: int) -> TileGrid:
    """The tiles of an `lr_hw` image: `tile` rounded down and `margin` up to whole `unit`s.
    `shapes_of(hw)` gives a flow's latent shapes for an LR of size hw (at batch 1); a unit
    square and the image's last partial unit are enough to place every latent part."""
    tile, margin = max(unit, tile // unit * unit), -(-margin // unit) * unit
    per_unit = shapes_of((unit, unit))
    factors = tuple(Fraction(s[-2], unit) for s in per_unit)
    if any(Fraction(s[-1], unit) != f for s, f in zip(per_unit, factors)) or any(f * unit % 1 for f in factors):
        raise UsageError(f"this flow's latent does not tile: a {unit}x{unit} LR gives latent maps {per_unit}")
    rest = tuple((n - 1) % unit + 1 for n in lr_hw)  # the last unit, whole or partial
    full = tuple(n - r for n, r in zip(lr_hw, rest))
    shapes = tuple((*s[:-2], int(full[0] * f) + s[-2], int(full[1] * f) + s[-1])
                   for s, f in zip(shapes_of(rest), factors))
    return TileGrid(tuple(lr_hw), scale, tile, margin, factors, shapes)
