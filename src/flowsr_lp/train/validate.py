"""Validation during training, by the `evaluate` protocol (LINF's: PSNR on Y with shave =
ceil(scale), LR-PSNR; the LR an 8-bit MATLAB-bicubic image made from the modcropped HR, at any
scale, x2.5 included) on a few held-out images, plus the held-out bits/dim: of the flow
(N(0, I)) when training a flow, under the learned prior (N(mu, sigma^2)) when training one, so
a fine-tune that destroys the density shows while it runs."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.folders import find_images
from ..evaluate import Dataset, EvalOptions, make_pair, protocol_metrics
from ..pipeline import LearnedPrior, SuperResolver, TemperatureSampling


class Validator:
    def __init__(self, cfg: dict, device: torch.device):
        val = cfg["data"]["val"]
        self.scale = float(val["scale"])
        self.device = device
        self.opts = EvalOptions(data=[], scales=[self.scale], protocol="linf", use_lpips=False)
        self.pairs = []
        for f in find_images(val["folders"])[: val["max_images"]]:
            ds = Dataset(Path(f).parent.parent.name if Path(f).parent.name == "HR" else Path(f).parent.name,
                         Path(f).parent, None)
            hr, lr, _ = make_pair(Path(f), ds, self.scale, "make")
            self.pairs.append((lr, hr, ds.name))

    @torch.no_grad()
    def __call__(self, resolver: SuperResolver) -> dict:
        strategy = LearnedPrior(resolver.prior) if resolver.prior is not None else TemperatureSampling(0.0)
        density = LearnedPrior(resolver.prior) if resolver.prior is not None else TemperatureSampling(1.0)
        p, lp, bpd = [], [], []
        for lr, hr, name in self.pairs:
            lr_b, hr_b = lr[None].to(self.device), hr[None].to(self.device)
            sr = resolver(lr_b, size=tuple(hr.shape[-2:]), strategy=strategy).clamped().cpu()
            m = protocol_metrics(sr, hr[None], lr[None], self.scale, name, self.opts)
            p.append(m["psnr"])
            lp.append(m["lr_psnr"])
            bpd.append(resolver.bits_per_dim(hr_b, lr_b, density).item())
        return {"val_psnr": sum(p) / len(p), "val_lr_psnr": sum(lp) / len(lp), "val_bpd": sum(bpd) / len(bpd)}
