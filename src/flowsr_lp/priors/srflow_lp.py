"""SRFlow-LP latent module: one independent branch per latent (split eps, top z), each a
dense-block encoder, a UNet and a 1x1 output conv. Optionally (ours, off by default so the
official checkpoint loads) each branch also sees the LR image."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model_config import ModelConfig
from ..nets.dense import DenseBlock5
from ..nets.unet import OutConv, unet_forward, unet_layers
from ..nets.residual_correlation import ResidualCorrelation
from ..nets.scale_head import LR_CHANNELS, ScaleHead, check_parts, lr_map, split_prediction


@dataclass
class SRFlowPriorConfig(ModelConfig):
    dim: int = 64
    depth: int = 3
    latent_channels: tuple[int, ...] = (6, 96)  # SRFlow 4x: (eps, z)
    with_lr: bool = False
    initial_prior: str = "paper"  # the flow's initial prior the module was trained on (SRFlow has one)
    #: ours, off in every released module: also predict a scale sigma per latent element (nets/scale_head.py)
    scale_head: bool = False
    #: ours, off in every released module: > 0 models the residual's correlation over this many
    #: neighbouring positions (nets/residual_correlation.py), or one reach >= 0 per latent part
    #: (0: over a position's channels only); fitted by `stage: correlate`
    residual_reach: int | tuple[int, ...] = 0


class SRFlowLatentModule(nn.Module):
    kind = "srflow-lp"

    def __init__(self, config: SRFlowPriorConfig | None = None):
        super().__init__()
        self.config = cfg = config or SRFlowPriorConfig()
        d = cfg.dim
        own = d // 2 if cfg.with_lr else d
        if cfg.residual_reach:
            self.residual = ResidualCorrelation(cfg.residual_reach, cfg.latent_channels)
        for i, c in enumerate(cfg.latent_channels):
            setattr(self, f"input_proj{i}", DenseBlock5(c, own, own, None))
            if cfg.with_lr:
                setattr(self, f"lr_proj{i}", nn.Sequential(nn.Conv2d(3, d // 2, 3, padding=1), nn.LeakyReLU(0.2),
                                                           DenseBlock5(d // 2, d // 2, d // 2, None)))
            inc, downs, ups = unet_layers(d, cfg.depth)
            setattr(self, f"inc{i}", inc)
            setattr(self, f"down_layers{i}", downs)
            setattr(self, f"up_layers{i}", ups)
            setattr(self, f"outc{i}", OutConv(d, c))
            if cfg.scale_head:
                setattr(self, f"scale_head{i}", ScaleHead(d, c))

    @property
    def latent_channels(self) -> tuple[int, ...]:
        return self.config.latent_channels

    def lr_features(self, lr: torch.Tensor, size: tuple[int, int], part: int = 0) -> torch.Tensor | None:
        """The LR branch's features at the latent map's size (with `with_lr`); with the scale
        head, the resized LR (its input) follows as the last channels."""
        own = [lr_map(lr, size)] if self.config.scale_head else []
        if not self.config.with_lr:
            return own[0] if own else None
        f = getattr(self, f"lr_proj{part}")((lr - 0.5) / 0.5)
        return torch.cat([F.interpolate(f, size, mode="bilinear", align_corners=False), *own], 1)

    def generate(self, z0: torch.Tensor, lr_feat: torch.Tensor | None, part: int = 0) -> torch.Tensor:
        """mu of latent part `part`, or with the scale head [mu, log sigma] (2C channels)."""
        head_lr = None
        if self.config.scale_head:
            lr_feat, head_lr = lr_feat[:, :-LR_CHANNELS], lr_feat[:, -LR_CHANNELS:]
            lr_feat = lr_feat if lr_feat.shape[1] else None
        x = getattr(self, f"input_proj{part}")(z0)
        if lr_feat is not None:
            x = torch.cat([x, lr_feat], 1)
        x = unet_forward(x, getattr(self, f"inc{part}"), getattr(self, f"down_layers{part}"),
                         getattr(self, f"up_layers{part}"))
        mu = getattr(self, f"outc{part}")(x)
        return torch.cat([mu, getattr(self, f"scale_head{part}")(x, head_lr)], 1) if self.config.scale_head else mu

    def forward(self, latent: tuple[torch.Tensor, ...], lr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Standardised initial-prior latents, LR in [0, 1] -> learned latents."""
        return self.distribution(latent, lr)[0]

    def distribution(self, latent: tuple[torch.Tensor, ...], lr: torch.Tensor):
        """(mu parts, log sigma parts) with the scale head, (mu parts, None) without."""
        check_parts(latent, self.latent_channels, "SRFlow latent module")
        out = [self.generate(z0, self.lr_features(lr, z0.shape[-2:], i), i) for i, z0 in enumerate(latent)]
        return split_prediction(out, self.latent_channels)


RELEASED = {"srflow-lp-unet": SRFlowPriorConfig(dim=64, depth=3)}
