"""Running a latent module over maps too large for one pass: overlapping tiles blended with
linear ramps, each computed with extra context around it that is then dropped, so no seam
shows. Tiles start on a grid of the tile stride (a multiple of 8 by default), which keeps
the UNet's pooling grid aligned with the whole-map computation."""
from __future__ import annotations

from typing import Callable

import torch

from ..nets.scale_head import check_parts, split_prediction


def tile_starts(n: int, tile: int, stride: int) -> list[int]:
    if n <= tile:
        return [0]
    return sorted(set(range(0, n - tile, stride)) | {n - tile})


def ramp(length: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """1 inside, rising/falling linearly over `overlap` pixels on the sides that have a
    neighbouring tile."""
    w = torch.ones(length)
    k = min(overlap, length // 2)
    if k > 0:
        r = torch.arange(1, k + 1, dtype=torch.float32) / (k + 1)
        if not first:
            w[:k] = r
        if not last:
            w[-k:] = torch.minimum(w[-k:], r.flip(0))
    return w


def tiled_map(fn: Callable[..., torch.Tensor], maps: list[torch.Tensor | None], tile: int, overlap: int,
              margin: int = 0) -> torch.Tensor:
    """fn(*tiles) on overlapping tiles of B x C x H x W maps (None entries pass through),
    blended into one B x C' x H x W result. Each tile is computed with `margin` extra pixels
    of context on every side, which are dropped before blending."""
    ref = next(m for m in maps if m is not None)
    H, W = ref.shape[-2:]
    stride = max(1, tile - overlap)
    out = norm = None
    for r in tile_starts(H, tile, stride):
        for c in tile_starts(W, tile, stride):
            r0, c0 = max(0, r - margin), max(0, c - margin)
            r1, c1 = min(H, r + tile + margin), min(W, c + tile + margin)
            y = fn(*[m[..., r0:r1, c0:c1] if m is not None else None for m in maps])
            h, w = min(tile, H - r), min(tile, W - c)
            y = y[..., r - r0 : r - r0 + h, c - c0 : c - c0 + w]
            wgt = (ramp(h, overlap, r == 0, r + h >= H)[:, None] * ramp(w, overlap, c == 0, c + w >= W)[None]).to(y)
            if out is None:
                out = y.new_zeros(*y.shape[:2], H, W)
                norm = y.new_zeros(H, W)
            out[..., r : r + h, c : c + w] += y * wgt
            norm[r : r + h, c : c + w] += wgt
    return out / norm


def _within_budget(fn, z0: torch.Tensor, feat, max_pixels: int | None, tile: int, overlap: int,
                   margin: int) -> torch.Tensor:
    """fn(z0, feat) on at most `max_pixels` latent positions at a time, batch items counted:
    whole maps of as many items as fit, or (a map larger than the budget) tiles of as many."""
    b, h, w = z0.shape[0], *z0.shape[-2:]
    if max_pixels is None or b * h * w <= max_pixels:
        return fn(z0, feat)
    whole = h * w <= max_pixels
    per_item = h * w if whole else min(h, tile + 2 * margin) * min(w, tile + 2 * margin)
    n = max(1, max_pixels // per_item)
    run = fn if whole else (lambda z, f: tiled_map(fn, [z, f], tile, overlap, margin))
    return torch.cat([run(z0[k : k + n], None if feat is None else feat[k : k + n]) for k in range(0, b, n)])


def predict_latent(prior, latent: tuple[torch.Tensor, ...], lr: torch.Tensor, max_pixels: int | None = None,
                   tile: int = 256, overlap: int = 32, margin: int = 32) -> tuple[torch.Tensor, ...]:
    """The latent module's prediction (mu); each latent part whose map has more than
    `max_pixels` positions is computed in tiles (the LR branch always runs whole: it works
    at LR/3 resolution and is cheap)."""
    return predict_distribution(prior, latent, lr, max_pixels, tile, overlap, margin)[0]


def predict_distribution(prior, latent: tuple[torch.Tensor, ...], lr: torch.Tensor, max_pixels: int | None = None,
                         tile: int = 256, overlap: int = 32, margin: int = 32):
    """(mu parts, log sigma parts) of a module with a scale head, (mu parts, None) without;
    whole or tiled as `predict_latent`."""
    check_parts(latent, prior.latent_channels)
    out = []
    for i, z0 in enumerate(latent):
        feat = prior.lr_features(lr, tuple(z0.shape[-2:]), i)
        out.append(_within_budget(lambda z, f, i=i: prior.generate(z, f, i), z0, feat, max_pixels, tile, overlap,
                                  margin))
    return split_prediction(out, prior.latent_channels)
