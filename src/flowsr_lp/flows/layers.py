"""Invertible building blocks. Each is a pair of exact inverses returning log-determinants:
`forward(x, ...) -> (y, logdet)` and `inverse(y, ...) -> (x, logdet)`, where the inverse's
log-det is the negative of the forward one, summed per batch item (or per row for
vector-valued layers)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def inverse_f64(weight: torch.Tensor) -> torch.Tensor:
    """Matrix inverse computed in float64 and returned in the weight's dtype: the flows'
    inverses amplify rounding, and float64 keeps decoded values within 1e-5 of exact."""
    return torch.linalg.inv(weight.double()).to(weight.dtype)


class InvertibleLinear(nn.Module):
    """y = x W^T + b on the last dimension (LINF's `imnet.linears.i`)."""

    def __init__(self, dim: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(dim, dim))
        self._weight = nn.Parameter(q)
        self.bias = nn.Parameter(torch.zeros(dim))

    def logabsdet(self) -> torch.Tensor:
        return torch.linalg.slogdet(self._weight)[1]

    def forward(self, x):
        return x @ self._weight.T + self.bias, self.logabsdet()

    def inverse(self, y, weight_inv: torch.Tensor | None = None):
        if weight_inv is None:
            weight_inv = inverse_f64(self._weight)
        return (y - self.bias) @ weight_inv.T, -self.logabsdet()


# ---- SRFlow / Glow layers on B x C x H x W maps (key names as in SRFlow's checkpoints) ----
_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_p(x: torch.Tensor, mean: torch.Tensor | None = None, logs: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over C, H, W of log N(x; mean, exp(logs)^2)."""
    if mean is None:
        return (-0.5 * (x * x + _LOG_2PI)).flatten(1).sum(1)
    return (-0.5 * (2 * logs + (x - mean) ** 2 * torch.exp(-2 * logs) + _LOG_2PI)).flatten(1).sum(1)


def _pixels(x: torch.Tensor) -> int:
    return x.shape[2] * x.shape[3]


class ActNorm(nn.Module):
    """y = (x + bias) * exp(logs) per channel. The data-dependent initialisation runs only
    when asked for (`initialize`), never on loaded weights."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, scale: float = 1.0) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = (x - mean).square().mean(dim=(0, 2, 3), keepdim=True).sqrt()
        self.bias.copy_(-mean)
        self.logs.copy_(torch.log(scale / (std + 1e-6)))

    def forward(self, x, cond=None):
        return (x + self.bias) * torch.exp(self.logs), self.logs.sum() * _pixels(x) * x.new_ones(x.shape[0])

    def inverse(self, y, cond=None):
        return y * torch.exp(-self.logs) - self.bias, -self.logs.sum() * _pixels(y) * y.new_ones(y.shape[0])


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution y = W x per pixel (plain weight, no LU)."""

    def __init__(self, channels: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(q)

    def _logdet(self, x):
        return torch.linalg.slogdet(self.weight)[1] * _pixels(x) * x.new_ones(x.shape[0])

    def forward(self, x, cond=None):
        c = self.weight.shape[0]
        return F.conv2d(x, self.weight.view(c, c, 1, 1)), self._logdet(x)

    def inverse(self, y, cond=None):
        c = self.weight.shape[0]
        return F.conv2d(y, inverse_f64(self.weight).view(c, c, 1, 1)), -self._logdet(y)


class ConvActNorm(nn.Module):
    """Conv without bias ("same" padding) followed by an ActNorm (SRFlow's `Conv2d`)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel) * 0.05)
        self.actnorm = ActNorm(cout)

    def forward(self, x):
        return self.actnorm(F.conv2d(x, self.weight, padding=self.weight.shape[-1] // 2))[0]


class Conv2dZeros(nn.Conv2d):
    """Zero-initialised conv whose output is scaled by exp(3 * logs)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__(cin, cout, kernel, padding=kernel // 2)
        self.logs = nn.Parameter(torch.zeros(cout, 1, 1))
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x):
        return super().forward(x) * torch.exp(self.logs * 3)


def coupling_net(cin: int, cout: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(ConvActNorm(cin, hidden, 3), nn.ReLU(), ConvActNorm(hidden, hidden, 1), nn.ReLU(),
                         Conv2dZeros(hidden, cout))


def _shift_scale(h: torch.Tensor, eps: float):
    """Channels interleaved as (shift, scale) pairs ("cross" split)."""
    return h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0) + eps


class CondAffineCoupling(nn.Module):
    """SRFlow's `CondAffineSeparatedAndCond`: an affine transform of all channels from the
    condition alone, then an affine coupling of the second half from (first half, condition)."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 64, eps: float = 1e-4):
        super().__init__()
        self.half = channels // 2
        self.eps = eps
        self.fFeatures = coupling_net(cond_channels, 2 * channels, hidden)
        self.fAffine = coupling_net(self.half + cond_channels, 2 * (channels - self.half), hidden)

    @staticmethod
    def _log_sum(scale):
        return torch.log(scale).flatten(1).sum(1)

    def _from_condition(self, cond):
        """fFeatures(cond) and the condition's share of fAffine's first conv, in one conv over
        the wide condition (no concatenated copy of it)."""
        ff, fa = self.fFeatures[0], self.fAffine[0]
        h = F.conv2d(cond, torch.cat([ff.weight, fa.weight[:, self.half :]], 0), padding=1)
        n = ff.weight.shape[0]
        return self.fFeatures[1:](ff.actnorm(h[:, :n])[0]), h[:, n:]

    def _affine_net(self, z1, h_cond):
        """fAffine(cat(z1, cond)) given the condition's share of its first conv."""
        fa = self.fAffine[0]
        h = h_cond + F.conv2d(z1, fa.weight[:, : self.half], padding=1)
        return self.fAffine[1:](fa.actnorm(h)[0])

    def forward(self, z, cond):
        h_ft, h_cond = self._from_condition(cond)
        shift_ft, scale_ft = _shift_scale(h_ft, self.eps)
        z = (z + shift_ft) * scale_ft
        z1, z2 = z[:, : self.half], z[:, self.half :]
        shift, scale = _shift_scale(self._affine_net(z1, h_cond), self.eps)
        return torch.cat([z1, (z2 + shift) * scale], 1), self._log_sum(scale_ft) + self._log_sum(scale)

    def inverse(self, z, cond):
        h_ft, h_cond = self._from_condition(cond)
        z1, z2 = z[:, : self.half], z[:, self.half :]
        shift, scale = _shift_scale(self._affine_net(z1, h_cond), self.eps)
        z = torch.cat([z1, z2 / scale - shift], 1)
        shift_ft, scale_ft = _shift_scale(h_ft, self.eps)
        return z / scale_ft - shift_ft, -(self._log_sum(scale_ft) + self._log_sum(scale))


class FlowStep(nn.Module):
    """ActNorm -> invertible 1x1 conv -> (optional) conditional affine coupling."""

    def __init__(self, channels: int, cond_channels: int | None, hidden: int = 64):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels)
        self.affine = CondAffineCoupling(channels, cond_channels, hidden) if cond_channels else None

    def forward(self, x, cond):
        x, ld1 = self.actnorm(x)
        x, ld2 = self.invconv(x)
        if self.affine is None:
            return x, ld1 + ld2
        x, ld3 = self.affine(x, cond)
        return x, ld1 + ld2 + ld3

    def inverse(self, y, cond):
        ld = 0
        if self.affine is not None:
            y, ld = self.affine.inverse(y, cond)
        y, ld2 = self.invconv.inverse(y)
        y, ld3 = self.actnorm.inverse(y)
        return y, ld + ld2 + ld3


class Squeeze(nn.Module):
    """2x2 space-to-channel; volume preserving."""

    def forward(self, x, cond=None):
        b, c, h, w = x.shape
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y, cond=None):
        b, c, h, w = y.shape
        y = y.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(b, c // 4, 2 * h, 2 * w), y.new_zeros(b)


class Split2d(nn.Module):
    """Keeps the first half of the channels; the rest leaves the flow as a standardised
    latent eps whose Gaussian mean/log-std are predicted from the kept half."""

    def __init__(self, channels: int):
        super().__init__()
        self.keep = channels // 2
        self.conv = Conv2dZeros(self.keep, 2 * (channels - self.keep))

    def _prior(self, z1):
        h = self.conv(z1)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x):
        """x -> (kept half, eps, log-det = log N(z2; mean, exp(logs)))."""
        z1, z2 = x[:, : self.keep], x[:, self.keep :]
        mean, logs = self._prior(z1)
        return z1, (z2 - mean) * torch.exp(-logs), gaussian_log_p(z2, mean, logs)

    def inverse(self, z1, eps):
        mean, logs = self._prior(z1)
        z2 = mean + torch.exp(logs) * eps
        return torch.cat([z1, z2], 1), -gaussian_log_p(z2, mean, logs)
