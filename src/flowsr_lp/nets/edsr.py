"""EDSR-baseline encoder (Lim et al. 2017) without the upsampling tail, as LINF uses it."""
from __future__ import annotations

import torch
from torch import nn

# DIV2K RGB mean, kept only so the (unused) MeanShift layers hold the usual values.
_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _mean_shift(sign: int) -> nn.Conv2d:
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        conv.bias.copy_(sign * torch.tensor(_RGB_MEAN))
    conv.requires_grad_(False)
    return conv


class ResBlock(nn.Module):
    """conv3x3 -> activation -> conv3x3 with an identity skip (EDSR uses ReLU; FlowSR-LP's
    EDSR-baseline latent generator LeakyReLU 0.2)."""

    def __init__(self, n_feats: int, res_scale: float = 1.0, act: nn.Module | None = None):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
            act or nn.ReLU(inplace=True),
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
        )
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.body(x) * self.res_scale


class EDSRBaseline(nn.Module):
    """Head conv, residual body, global skip. `sub_mean`/`add_mean` exist in released
    state dicts but LINF never applies them, so neither do we."""

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.sub_mean = _mean_shift(-1)
        self.add_mean = _mean_shift(1)
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        self.body = nn.Sequential(
            *[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)],
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
        )
        self.out_dim = n_feats

    def forward(self, x):
        x = self.head(x)
        return x + self.body(x)
