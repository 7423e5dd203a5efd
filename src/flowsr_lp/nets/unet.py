"""The UNet FlowSR-LP uses as latent generator (bilinear upsampling variant)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    """(3x3 conv without bias -> BatchNorm -> LeakyReLU 0.2) twice."""

    def __init__(self, cin: int, cout: int, mid: int | None = None):
        super().__init__()
        mid = mid or cout
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))

    def forward(self, x, norm=None):
        """`norm(batch_norm, x)`, where given, runs in place of each BatchNorm (see
        nets/scale_stats.py)."""
        if norm is None:
            return self.double_conv(x)
        for layer in self.double_conv:
            x = norm(layer, x) if isinstance(layer, nn.modules.batchnorm._BatchNorm) else layer(x)
        return x


class Down(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout))

    def forward(self, x, norm=None):
        return self.maxpool_conv[1](self.maxpool_conv[0](x), norm)


class Up(nn.Module):
    """Bilinear x2 (align_corners=True), pad to the skip's size (odd pixel bottom/right),
    concatenate [skip, upsampled], DoubleConv with mid = in / 2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = DoubleConv(cin, cout, cin // 2)

    def forward(self, x, skip, norm=None):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], 1), norm)


class OutConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.conv(x)


def unet_layers(dim: int, depth: int, bilinear: bool = True) -> tuple[DoubleConv, nn.ModuleList, nn.ModuleList]:
    """(inc, downs, ups) of a UNet of width `dim`: downs d -> 2d -> ... with the deepest one
    not widened (bilinear upsampling), ups back to d."""
    if not bilinear:
        raise ValueError("only the bilinear-upsampling UNet is supported (as in every released LP model)")
    downs = [Down(dim * 2**i, dim * 2 ** (i + 1) if i < depth - 1 else dim * 2**i) for i in range(depth)]
    ups = [Up(dim * 2 ** (depth - i), dim * 2 ** (depth - i - 2) if i < depth - 1 else dim) for i in range(depth)]
    return DoubleConv(dim, dim), nn.ModuleList(downs), nn.ModuleList(ups)


def unet_forward(x: torch.Tensor, inc: nn.Module, downs: nn.ModuleList, ups: nn.ModuleList, norm=None) -> torch.Tensor:
    """Any map size. Maps smaller than 2^depth on a side (which upstream cannot pool) are
    replicate-padded bottom/right to that size and cropped back; larger ones run as they are.
    `norm`: see `DoubleConv.forward`."""
    h, w = x.shape[-2:]
    m = 2 ** len(downs)
    if h < m or w < m:
        x = F.pad(x, (0, max(0, m - w), 0, max(0, m - h)), mode="replicate")
    skips = [inc(x, norm)]
    for down in downs:
        skips.append(down(skips[-1], norm))
    x = skips.pop()
    for up in ups:
        x = up(x, skips.pop(), norm)
    return x[..., :h, :w]
