"""Invertible building blocks and how they compose.

The contract (`InvertibleLayer`, in the manner of nflows' `Transform`): every layer has
`forward(x, cond=None) -> (y, logdet)` and `inverse(y, cond=None) -> (x, logdet)`, exact
inverses of each other, where `logdet` is log |det dy/dx| per batch item (shape (B,), or a
scalar that broadcasts to it) and the inverse's is its negative. `cond` is the conditioning
tensor of the call (ignored by unconditional layers). `output_shape` maps an input shape to
the output's. `InvertibleSequence` chains layers; `MultiScaleFlow` is Glow's multi-scale
architecture (levels of layers, `Split2d` factoring half of the channels out as a latent
part after a level).

Square weights are inverted in float64 (`inverse_f64`). Values derived from weights (those
inverses, the coupling layers' condition kernels) are cached (`WeightCache`) while no
gradient to the weights is needed and the weights are unchanged (same storage and in-place
version, model in eval mode); `eval()`/`train()` and `load_state_dict` clear the caches.
Inside `derive_once(module)` they are also kept in training, for the length of one call.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.upsampled_conv import conv3x3, conv3x3_kernels, layout
from ..precision import to_float64


def inverse_f64(weight: torch.Tensor) -> torch.Tensor:
    """Matrix inverse computed in float64 and returned in the weight's dtype: the flows'
    inverses amplify rounding, and float64 keeps decoded values within 1e-5 of exact (on the
    CPU for a device without float64, see `precision.to_float64`)."""
    return torch.linalg.inv(to_float64(weight)).to(weight.device, weight.dtype)


class InvertibleLayer(nn.Module):
    """A bijection with a tractable log-determinant (see the module docstring)."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)


def chain(layers: Iterable[InvertibleLayer], x: torch.Tensor, cond, logdet: torch.Tensor):
    """Apply `layers` in order, adding each log-det to `logdet`."""
    for layer in layers:
        x, ld = layer(x, cond)
        logdet = logdet + ld
    return x, logdet


def chain_inverse(layers: Sequence[InvertibleLayer], y: torch.Tensor, cond, logdet: torch.Tensor):
    """Invert `layers` (last first), adding each inverse log-det to `logdet`."""
    for layer in reversed(layers):
        y, ld = layer.inverse(y, cond)
        logdet = logdet + ld
    return y, logdet


class InvertibleSequence(InvertibleLayer):
    """Layers applied in order (all with the same `cond`); inverted in reverse order."""

    def __init__(self, layers: Iterable[InvertibleLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x, cond=None):
        return chain(self.layers, x, cond, x.new_zeros(x.shape[0]))

    def inverse(self, y, cond=None):
        return chain_inverse(self.layers, y, cond, y.new_zeros(y.shape[0]))

    def output_shape(self, shape):
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return tuple(shape)


class WeightCache:
    """One value derived from a module's weights, reused between calls while the module is
    in eval mode, no gradient to the weights is needed and they are unchanged (same storage,
    in-place version, dtype and device) and `extra` (what else the value depends on) is equal.
    An entry holds on to the weights it was derived from, so their memory cannot be handed
    to a new weight (allocators reuse freed blocks at once) while its address is the key.
    While `held` (see `derive_once`), values derived with autograd are kept too, apart."""

    def __init__(self):
        self.held = 0
        self.clear()

    def clear(self) -> None:
        self._entry = self._held = None  # (key, value, weights), replaced as one object

    def get(self, module: nn.Module, weights: Sequence[torch.Tensor], extra, derive):
        grad = module.training or (torch.is_grad_enabled() and any(w.requires_grad for w in weights))
        if grad and not self.held:
            return derive()
        key = (tuple((w.data_ptr(), w._version, w.dtype, w.device, w.shape) for w in weights), extra)
        entry = self._held if grad else self._entry
        if entry is None or entry[0] != key:
            with contextlib.nullcontext() if grad else torch.no_grad():
                entry = (key, derive(), [w.detach() for w in weights])
            if grad:
                self._held = entry
            else:
                self._entry = entry
        return entry[1]


class CachingLayer(InvertibleLayer):
    """A layer that reuses a value derived from its weights (`self.cache`, see `WeightCache`);
    `train()`/`eval()` and `load_state_dict` clear it."""

    def __init__(self):
        super().__init__()
        self.cache = WeightCache()

    def train(self, mode: bool = True):
        self.cache.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self.cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)


_HOLDING = threading.Lock()  # the counts of concurrent calls (the app decodes in threads)


@contextlib.contextmanager
def derive_once(module: nn.Module):
    """Inside, `module`'s weight caches keep their values in training too (with autograd),
    so a transform applied chunk by chunk derives each value once per call (LINF
    fine-tuning: one float64 inverse per layer per decode, not per chunk); those values are
    dropped on leaving, so no autograd graph outlives the call."""
    caches = [m.cache for m in module.modules() if isinstance(m, CachingLayer)]
    with _HOLDING:
        for c in caches:
            c.held += 1
    try:
        yield
    finally:
        with _HOLDING:
            for c in caches:
                c.held -= 1
                if not c.held:
                    c._held = None


class CachedInverse(CachingLayer):
    """A layer with a square weight whose float64 inverse is reused between calls."""

    def square_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def weight_inverse(self) -> torch.Tensor:
        w = self.square_weight()
        return self.cache.get(self, [w], None, lambda: inverse_f64(w))


class InvertibleLinear(CachedInverse):
    """y = x W^T + b on the last dimension (LINF's `imnet.linears.i`); log-det per row."""

    def __init__(self, dim: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(dim, dim))
        self._weight = nn.Parameter(q)
        self.bias = nn.Parameter(torch.zeros(dim))

    def square_weight(self) -> torch.Tensor:
        return self._weight

    def logabsdet(self) -> torch.Tensor:
        return torch.linalg.slogdet(self._weight)[1]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` without the log-det (no slogdet on the weight)."""
        return x @ self._weight.T + self.bias

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """`inverse` without the log-det."""
        return (y - self.bias) @ self.weight_inverse().T

    def forward(self, x, cond=None):
        return self.transform(x), self.logabsdet()

    def inverse(self, y, cond=None):
        return self.invert(y), -self.logabsdet()


# ---- SRFlow / Glow layers on B x C x H x W maps (key names as in SRFlow's checkpoints) ----
_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_p(x: torch.Tensor, mean: torch.Tensor | None = None, logs: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over C, H, W of log N(x; mean, exp(logs)^2)."""
    if mean is None:
        return (-0.5 * (x * x + _LOG_2PI)).flatten(1).sum(1)
    return (-0.5 * (2 * logs + (x - mean) ** 2 * torch.exp(-2 * logs) + _LOG_2PI)).flatten(1).sum(1)


def _pixels(x: torch.Tensor) -> int:
    return x.shape[2] * x.shape[3]


class ActNorm(InvertibleLayer):
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


class InvConv1x1(CachedInverse):
    """Invertible 1x1 convolution y = W x per pixel (plain weight, no LU)."""

    def __init__(self, channels: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(q)

    def square_weight(self) -> torch.Tensor:
        return self.weight

    def _logdet(self, x):
        return torch.linalg.slogdet(self.weight)[1] * _pixels(x) * x.new_ones(x.shape[0])

    def forward(self, x, cond=None):
        c = self.weight.shape[0]
        return F.conv2d(x, self.weight.view(c, c, 1, 1)), self._logdet(x)

    def inverse(self, y, cond=None):
        c = self.weight.shape[0]
        return F.conv2d(y, self.weight_inverse().view(c, c, 1, 1)), -self._logdet(y)


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


class CondAffineCoupling(CachingLayer):
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
        the wide condition (no concatenated copy of it; an `UpsampledConcat` condition is
        convolved at its parts' sizes)."""
        ff, fa = self.fFeatures[0], self.fAffine[0]
        # a conditioning network (it never sees z): it runs in the condition's dtype (bf16 when
        # the condition was computed under autocast), the transform itself in float32
        kernels = self.cache.get(self, [ff.weight, fa.weight], layout(cond), lambda: conv3x3_kernels(
            cond, torch.cat([ff.weight, fa.weight[:, self.half :]], 0)))
        h = conv3x3(cond, kernels).float()
        n = ff.weight.shape[0]
        return self.fFeatures[1:](ff.actnorm(h[:, :n])[0]), h[:, n:]

    def _affine_net(self, z1, h_cond):
        """fAffine(cat(z1, cond)) given the condition's share of its first conv."""
        fa = self.fAffine[0]
        h = h_cond + F.conv2d(z1, fa.weight[:, : self.half], padding=1)
        return self.fAffine[1:](fa.actnorm(h)[0])

    def forward(self, z, cond=None):
        h_ft, h_cond = self._from_condition(cond)
        shift_ft, scale_ft = _shift_scale(h_ft, self.eps)
        z = (z + shift_ft) * scale_ft
        z1, z2 = z[:, : self.half], z[:, self.half :]
        shift, scale = _shift_scale(self._affine_net(z1, h_cond), self.eps)
        return torch.cat([z1, (z2 + shift) * scale], 1), self._log_sum(scale_ft) + self._log_sum(scale)

    def inverse(self, z, cond=None):
        h_ft, h_cond = self._from_condition(cond)
        z1, z2 = z[:, : self.half], z[:, self.half :]
        shift, scale = _shift_scale(self._affine_net(z1, h_cond), self.eps)
        z = torch.cat([z1, z2 / scale - shift], 1)
        shift_ft, scale_ft = _shift_scale(h_ft, self.eps)
        return z / scale_ft - shift_ft, -(self._log_sum(scale_ft) + self._log_sum(scale))


class FlowStep(InvertibleLayer):
    """ActNorm -> invertible 1x1 conv -> (optional) conditional affine coupling."""

    def __init__(self, channels: int, cond_channels: int | None, hidden: int = 64):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels)
        self.affine = CondAffineCoupling(channels, cond_channels, hidden) if cond_channels else None

    def forward(self, x, cond=None):
        x, ld1 = self.actnorm(x)
        x, ld2 = self.invconv(x)
        if self.affine is None:
            return x, ld1 + ld2
        x, ld3 = self.affine(x, cond)
        return x, ld1 + ld2 + ld3

    def inverse(self, y, cond=None):
        ld = 0
        if self.affine is not None:
            y, ld = self.affine.inverse(y, cond)
        y, ld2 = self.invconv.inverse(y)
        y, ld3 = self.actnorm.inverse(y)
        return y, ld + ld2 + ld3


class Squeeze(InvertibleLayer):
    """2x2 space-to-channel; volume preserving."""

    def output_shape(self, shape):
        b, c, h, w = shape
        return (b, 4 * c, h // 2, w // 2)

    def forward(self, x, cond=None):
        b, c, h, w = x.shape
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y, cond=None):
        b, c, h, w = y.shape
        y = y.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(b, c // 4, 2 * h, 2 * w), y.new_zeros(b)


class Split2d(nn.Module):
    """Glow's factor-out (not an `InvertibleLayer`: it has two outputs): keeps the first half
    of the channels; the rest leaves the flow as a standardised latent eps whose Gaussian
    mean/log-std are predicted from the kept half."""

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

    def factored_shape(self, shape):
        b, c, h, w = shape
        return (b, c - self.keep, h, w)

    def kept_shape(self, shape):
        return (shape[0], self.keep, *shape[2:])


class MultiScaleFlow(nn.Module):
    """Glow's multi-scale flow: levels of invertible layers, each conditioned on its own map,
    some followed by a `Split2d`. The layers sit in one flat `layers` list (the checkpoints'
    key names); `spans` records each level's [start, end) and whether a split follows.

    forward: x -> (latent parts: the eps of each split in order, then the top map; sum of the
    log-dets and of the factored parts' log-likelihoods). inverse: the reverse."""

    def __init__(self, levels: Sequence[tuple[Sequence[InvertibleLayer], Split2d | None]]):
        super().__init__()
        layers, self.spans = [], []
        for steps, split in levels:
            self.spans.append((len(layers), len(layers) + len(steps), split is not None))
            layers += list(steps) + ([split] if split is not None else [])
        self.layers = nn.ModuleList(layers)

    def levels(self):
        """(the level's layers, its split or None) per level."""
        return [(self.layers[a:b], self.layers[b] if split else None) for a, b, split in self.spans]

    def forward(self, x: torch.Tensor, conds: Sequence[torch.Tensor]):
        parts, logdet = [], x.new_zeros(x.shape[0])
        for (steps, split), cond in zip(self.levels(), conds, strict=True):
            x, logdet = chain(steps, x, cond, logdet)
            if split is not None:
                x, eps, ld = split(x)
                parts.append(eps)
                logdet = logdet + ld
        return (*parts, x), logdet

    def inverse(self, latent: Sequence[torch.Tensor], conds: Sequence[torch.Tensor]):
        *eps, x = latent
        logdet = x.new_zeros(x.shape[0])
        for (steps, split), cond in reversed(list(zip(self.levels(), conds, strict=True))):
            if split is not None:
                x, ld = split.inverse(x, eps.pop())
                logdet = logdet + ld
            x, logdet = chain_inverse(steps, x, cond, logdet)
        return x, logdet

    def latent_shapes(self, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Shapes of the latent parts for an input of `shape`."""
        out = []
        for steps, split in self.levels():
            for layer in steps:
                shape = layer.output_shape(shape)
            if split is not None:
                out.append(split.factored_shape(shape))
                shape = split.kept_shape(shape)
        return out + [tuple(shape)]
