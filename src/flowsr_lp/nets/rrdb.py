"""RRDB network (ESRGAN layout), used as LINF's encoder and as SRFlow's conditioner."""
from __future__ import annotations

import torch
from torch import nn

from ..precision import full_precision
from .dense import DenseBlock5


class RRDB(nn.Module):
    def __init__(self, nf: int = 64, gc: int = 32):
        super().__init__()
        self.RDB1 = DenseBlock5(nf, gc, nf, 0.2)
        self.RDB2 = DenseBlock5(nf, gc, nf, 0.2)
        self.RDB3 = DenseBlock5(nf, gc, nf, 0.2)

    def forward(self, x):
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's RRDB network. The upsampling convs exist so released state dicts load
    strictly; which of them run depends on the user (LINF encoder vs SRFlow conditioner)."""

    def __init__(self, nf: int = 64, nb: int = 23, gc: int = 32, n_upconv: int = 2):
        super().__init__()
        self.conv_first = nn.Conv2d(3, nf, 3, padding=1)
        self.RRDB_trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, padding=1)
        for i in range(1, n_upconv + 1):
            setattr(self, f"upconv{i}", nn.Conv2d(nf, nf, 3, padding=1))
        self.HRconv = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_last = nn.Conv2d(nf, 3, 3, padding=1)
        self.out_dim = nf
        self.n_upconv = n_upconv

    def trunk(self, x, taps: tuple[int, ...] = ()):
        """Return (first-conv features, trunk output, [outputs of the tapped blocks])."""
        # channels-last (NHWC) lets oneDNN convolve without reordering, and makes the dense
        # blocks' concatenations cheap copies along the innermost dimension; the residual
        # stream stays float32 under autocast (only the blocks' branches run reduced). The
        # first conv reads the image itself and runs in float32 (3 input channels: nearly
        # free): with it in bf16, random-weight SRFlow at bf16 was up to 2.3/255 from fp32
        # on the interior, with it in float32 up to 1.4/255
        with full_precision(x.device):
            f = self.conv_first(x.float().contiguous(memory_format=torch.channels_last))
        h, tapped = f, []
        for i, block in enumerate(self.RRDB_trunk):
            h = block(h)
            if i in taps:
                tapped.append(h)
        return f, h, tapped

    def forward(self, x):
        """LINF's encoder output: ESRGAN's global skip around trunk + trunk_conv."""
        f, t, _ = self.trunk(x)
        return f + self.trunk_conv(t)
