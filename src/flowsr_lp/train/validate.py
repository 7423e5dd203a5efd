"""Validation during training: PSNR (RGB, shave = scale) and LR-PSNR of the current model on
a few held-out images, LR made by modcrop + MATLAB-style bicubic."""
from __future__ import annotations

import torch

from ..data.folders import find_images, load_rgb_uint8
from ..data.resize import imresize, modcrop
from ..metrics import lr_psnr, psnr
from ..pipeline import SuperResolver


class Validator:
    def __init__(self, cfg: dict, device: torch.device):
        val = cfg["data"]["val"]
        self.scale = int(val["scale"])
        self.device = device
        self.pairs = []
        for f in find_images(val["folders"])[: val["max_images"]]:
            hr = modcrop(load_rgb_uint8(f), self.scale).float() / 255
            self.pairs.append((imresize(hr, 1 / self.scale).clamp(0, 1), hr))

    @torch.no_grad()
    def __call__(self, resolver: SuperResolver) -> dict:
        p, lp = [], []
        for lr, hr in self.pairs:
            sr = resolver.upscale(lr[None].to(self.device), tuple(hr.shape[-2:]), tau=0.0).cpu().clamp(0, 1)
            p.append(psnr(sr, hr[None], shave=self.scale).item())
            lp.append(lr_psnr(sr, lr[None], self.scale).item())
        return {"val_psnr": sum(p) / len(p), "val_lr_psnr": sum(lp) / len(lp)}
