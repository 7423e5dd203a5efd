"""The app's pictures, as H x W x 3 uint8 arrays: SR outputs (an exploding inverse becomes a
marker image, never a clamped picture), heat maps over the image and zoomed crops."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from ..images import to_uint8
from ..metrics.generative import grid_residual, grid_score

MARKER_BAD = (255, 0, 200)  # non-finite values
MARKER_STRIPE = (90, 0, 0)


def _font(size: int):
    return ImageFont.load_default(size=size)


def label(img: np.ndarray, text: str, size: int = 14) -> np.ndarray:
    """A dark banner with `text` across the top of the image (lines split at "\n"), the font
    shrunk until the longest line fits."""
    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    lines = text.split("\n")
    while size > 6 and max(draw.textlength(line, font=_font(size)) for line in lines) > im.width - 6:
        size -= 1
    font = _font(size)
    h = min(im.height, len(lines) * (size + 3) + 5)
    draw.rectangle((0, 0, im.width, h), fill=(0, 0, 0))
    for k, line in enumerate(lines):
        draw.text((3, 3 + k * (size + 3)), line, fill=(255, 255, 255), font=font)
    return np.asarray(im)


def exploding_marker(sr: torch.Tensor) -> np.ndarray:
    """An exploding inverse, shown as such: the image's finite values dimmed to gray, the
    inf/NaN pixels in magenta, diagonal stripes and a banner saying what happened."""
    bad = ~torch.isfinite(sr).all(0)
    gray = torch.nan_to_num(sr, nan=0.0, posinf=0.0, neginf=0.0).clamp(0, 1).mean(0) * 0.35
    img = gray[..., None].expand(-1, -1, 3).mul(255).round().to(torch.uint8).numpy().copy()
    img[bad.numpy()] = MARKER_BAD
    H, W = bad.shape
    yy, xx = np.mgrid[:H, :W]
    img[((xx + yy) // 6) % 4 == 0] = MARKER_STRIPE
    share = bad.float().mean().item()
    return label(img, f"EXPLODING INVERSE\n{100 * share:.2g}% inf/NaN", size=20)


def display(sr: torch.Tensor, finite: bool) -> np.ndarray:
    """A decoded SR image (3 x H x W, raw) for the page; `finite`: the pipeline's check of it."""
    return to_uint8(sr) if finite else exploding_marker(sr)


def grid_map(sr: torch.Tensor, lr: torch.Tensor, region: int = 24, period: int = 3) -> torch.Tensor:
    """The grid score of each `region` x `region` block (block corners on the patch grid):
    the same excess jump across `period`-pixel patch borders as `metrics.grid_score`, on the
    same residual against the bilinear upsampling of the LR."""
    if region % period:
        raise ValueError(f"region {region} must be a multiple of the patch period {period}")
    res = grid_residual(sr.clamp(0, 1)[None], lr)
    H, W = res.shape[-2:]
    rows, cols = max(1, H // region), max(1, W // region)
    tiles = res[..., :rows * region, :cols * region].unfold(2, region, region).unfold(3, region, region)
    tiles = tiles[0].permute(1, 2, 0, 3, 4).reshape(rows * cols, 3, region, region)
    return grid_score(tiles, period=period).reshape(rows, cols).float()


def heat_figure(background: torch.Tensor, panels: list[tuple[str, torch.Tensor]], bar: str,
                vmin: float | None = 0.0, vmax: float | None = None, cmap: str = "magma") -> np.ndarray:
    """Maps (rows x cols each, covering the image) drawn over the dimmed image, one panel
    each, one colour scale for all; thread-safe (no pyplot)."""
    img = background.clamp(0, 1).permute(1, 2, 0).numpy()
    H, W = img.shape[:2]
    if vmax is None:
        vmax = max(float(m.max()) for _, m in panels) or 1.0
    fig = Figure(figsize=(3.2 * len(panels) + 1.3, 3.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, m) in zip(axes, panels):
        ax.imshow(img * 0.5)
        im = ax.imshow(m.numpy(), cmap=cmap, extent=(0, W, H, 0), vmin=vmin, vmax=vmax, alpha=0.75,
                       interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=list(axes), fraction=0.046, label=bar)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def zoom(images: list[tuple[str, np.ndarray]], x: int, y: int, window: int = 48, size: int = 192) -> np.ndarray:
    """The `window` x `window` crop centred on (x, y) of each image (same size), enlarged to
    `size` pixels with nearest neighbours and labelled, side by side."""
    H, W = images[0][1].shape[:2]
    window = min(window, H, W)
    top = int(np.clip(y - window // 2, 0, H - window))
    left = int(np.clip(x - window // 2, 0, W - window))
    tiles = []
    for name, img in images:
        crop = Image.fromarray(img[top:top + window, left:left + window])
        tiles.append(label(np.asarray(crop.resize((size, size), Image.NEAREST)), name, size=12))
    gap = np.full((size, 4, 3), 255, np.uint8)
    row = [t for tile in tiles for t in (tile, gap)][:-1]
    return np.concatenate(row, axis=1)
