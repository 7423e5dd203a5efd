"""Training-batch recipes. A batch shares its scale (and, for LINF-LP, its loss window), so
its HR crops have one size; crop positions and flips are drawn per item. Every draw comes
from the generators passed in, which makes batches reproducible (see batches.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .resize import imresize


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def _randint(gen: torch.Generator, hi: int) -> int:
    """Uniform integer in [0, hi]."""
    return int(torch.randint(0, hi + 1, (), generator=gen))


def random_crop(img: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    h, w = img.shape[-2:]
    top, left = _randint(gen, h - size), _randint(gen, w - size)
    return img[:, top : top + size, left : left + size]


def augment(img: torch.Tensor, gen: torch.Generator, transpose: bool = True) -> torch.Tensor:
    """Random horizontal flip, vertical flip and (optionally) transpose."""
    flips = torch.rand(3, generator=gen) < 0.5
    if flips[0]:
        img = img.flip(-1)
    if flips[1]:
        img = img.flip(-2)
    if transpose and flips[2]:
        img = img.transpose(-1, -2)
    return img


def pil_bicubic(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 3 x H x W -> uint8 3 x size x size with PIL's bicubic (as LINF makes its LR)."""
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    out = np.asarray(pil.resize((size, size), Image.BICUBIC))
    return torch.from_numpy(out.copy()).permute(2, 0, 1)


#: how LINF crops make their LR: PIL's bicubic (LINF's own training) or MATLAB's antialiased
#: bicubic (`imresize`, as `evaluate` and the benchmarks make LR images)
LR_KERNELS = ("pil", "matlab")


def downscale(hr: torch.Tensor, size: int, kernel: str) -> torch.Tensor:
    """uint8 3 x H x W -> uint8 3 x size x size with the named kernel (LR_KERNELS)."""
    if kernel == "pil":
        return pil_bicubic(hr, size)
    if kernel == "matlab":
        return imresize(hr[None], out_size=(size, size))[0]
    raise ValueError(f"lr_kernel must be one of {LR_KERNELS}, got {kernel!r}")


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


@dataclass
class LINFCrops:
    """LINF stage-1 / fine-tune crops: LR `lr_size`^2, scale s ~ U(lo, hi) per batch, HR
    crop round(lr_size * s), LR by PIL bicubic (or `lr_kernel: matlab`), flips + transpose. s
    is capped so the crop fits the smallest image of the batch."""

    lr_size: int = 48
    scale_min: float = 1.0
    scale_max: float = 4.0
    lr_kernel: str = "pil"

    def __call__(self, images, min_side: int, gen: torch.Generator, item_gens) -> dict:
        s = _uniform(gen, self.scale_min, min(self.scale_max, min_side / self.lr_size))
        size = round(self.lr_size * s)
        hrs = [augment(random_crop(img, size, g), g) for img, g in zip(images, item_gens)]
        lrs = [downscale(hr.contiguous(), self.lr_size, self.lr_kernel) for hr in hrs]
        return {"lr": to_float(torch.stack(lrs)), "hr": to_float(torch.stack(hrs)), "scale": size / self.lr_size}


@dataclass
class LINFLPCrops:
    """FlowSR-LP's LINF-LP crops: an HR crop of round(lr_size * s) resized (PIL bicubic) to
    an lr_size^2 LR; the losses use a `window`^2 HR window of the crop (one offset per
    batch). As upstream, the LR branch sees the whole LR while the window covers part of
    the crop, so the two are misaligned unless s is close to window / lr_size.
    `window: null` is our aligned variant: the loss covers the whole crop, as at test time
    (the latent map then grows with s). `lr_kernel: matlab` makes the LR as `evaluate` does."""

    lr_size: int = 96
    window: int | None = 96
    scale_min: float = 1.0
    scale_max: float = 4.0
    lr_kernel: str = "pil"  # LR_KERNELS

    def __call__(self, images, min_side: int, gen: torch.Generator, item_gens) -> dict:
        lo = max(self.scale_min, (self.window or 0) / self.lr_size)
        s = _uniform(gen, lo, max(lo, min(self.scale_max, min_side / self.lr_size)))
        size = round(self.lr_size * s)
        win = self.window or size
        top, left = _randint(gen, size - win), _randint(gen, size - win)
        hrs = [augment(random_crop(img, size, g), g) for img, g in zip(images, item_gens)]
        lrs = [downscale(hr.contiguous(), self.lr_size, self.lr_kernel) for hr in hrs]
        return {"lr": to_float(torch.stack(lrs)), "hr": to_float(torch.stack(hrs)),
                "window": (top, left, win, win), "scale": size / self.lr_size}


@dataclass
class SRFlowCrops:
    """SRFlow crops: `hr_size`^2 HR, LR by MATLAB-style bicubic 1/scale, flips only."""

    hr_size: int = 160
    scale: int = 4

    def __call__(self, images, min_side: int, gen: torch.Generator, item_gens) -> dict:
        hrs = [augment(random_crop(img, self.hr_size, g), g, transpose=False) for img, g in zip(images, item_gens)]
        hr = torch.stack(hrs)
        return {"lr": imresize(hr, 1 / self.scale).float() / 255.0, "hr": to_float(hr), "scale": self.scale}


CROPS = {"linf": LINFCrops, "linf-lp": LINFLPCrops, "srflow": SRFlowCrops}


def make_crops(spec: dict):
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in CROPS:
        raise ValueError(f"data.crop.kind must be one of {sorted(CROPS)}, got {kind!r}")
    return CROPS[kind](**spec)


def min_image_side(crops) -> int:
    """The smallest image side a recipe can crop from."""
    if isinstance(crops, SRFlowCrops):
        return crops.hr_size
    if isinstance(crops, LINFLPCrops):
        return max(crops.window or 0, round(crops.lr_size * crops.scale_min))
    return round(crops.lr_size * crops.scale_min)
