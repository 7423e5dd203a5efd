"""The five-conv dense block shared by ESRGAN's RDB and FlowSR-LP's input encoders."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import compute_dtype


def is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class DenseBlock5(nn.Module):
    """Five 3x3 convs, each seeing the input and all earlier outputs; LeakyReLU 0.2 after the
    first four. With `residual_scale` it is ESRGAN's RDB (`out * scale + x`); with None it
    is the plain dense block of FlowSR-LP's input encoders (no skip)."""

    def __init__(self, in_ch: int, growth: int, out_ch: int, residual_scale: float | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, growth, 3, padding=1)
        self.conv2 = nn.Conv2d(in_ch + growth, growth, 3, padding=1)
        self.conv3 = nn.Conv2d(in_ch + 2 * growth, growth, 3, padding=1)
        self.conv4 = nn.Conv2d(in_ch + 3 * growth, growth, 3, padding=1)
        self.conv5 = nn.Conv2d(in_ch + 4 * growth, out_ch, 3, padding=1)
        self.residual_scale = residual_scale

    def forward(self, x):
        convs = (self.conv1, self.conv2, self.conv3, self.conv4)
        if torch.is_grad_enabled() or is_channels_last(x):
            # autograd keeps each conv's input, and in NHWC a channel prefix is not contiguous:
            # concatenate anew (in NHWC that is a cheap copy along the innermost dimension)
            feats = [x]
            for conv in convs:
                feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
            out = self.conv5(torch.cat(feats, 1))
        else:  # NCHW: one buffer; each conv reads a channel prefix and appends its output
            n, g = x.shape[1], self.conv1.out_channels
            buf = x.new_empty(x.shape[0], n + 4 * g, *x.shape[2:], dtype=compute_dtype(x))
            buf[:, :n] = x
            for i, conv in enumerate(convs):
                k = n + i * g
                buf[:, k : k + g] = F.leaky_relu(conv(buf[:, :k]), 0.2)
            out = self.conv5(buf)
        if self.residual_scale is None:
            return out
        return out * self.residual_scale + x
