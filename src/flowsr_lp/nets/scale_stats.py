"""BatchNorm statistics per scale (ours, beyond the paper). An arbitrary-scale latent module
trains on batches of one scale each, so its BatchNorm layers normalise every scale by that
scale's own batch statistics, while at test time one set of running statistics, averaged over
all the scales it saw, serves them all. `ScaleStats` keeps the running statistics at a few
scales instead and, at test time, interpolates them (linearly in log scale) at the scale of
the image. Training is unchanged: the BatchNorm layers run as they are and their inputs'
batch statistics are recorded beside, into the two scales around the batch's.

`ScaleAffine` (optional) adds a learned gain and shift per channel at the same scales, applied
after each BatchNorm and interpolated the same way: the layers' affine made scale-dependent.
It starts at zero (the identity), so a trained module grows it with its output unchanged."""
from __future__ import annotations

import bisect
import math

import torch
import torch.nn.functional as F
from torch import nn


def batch_norms(*modules: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `modules`, in order."""
    return [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def check_scales(scales, what: str) -> None:
    """Refuse anything but increasing positive scales, naming the config field `what`."""
    if not scales or any(s <= 0 for s in scales) or list(scales) != sorted(set(scales)):
        raise ValueError(f"{what} must be increasing positive scales, got {scales}")


def log_scale_weights(log_scales: list[float], scale: float) -> list[tuple[int, float]]:
    """(index, weight) of the one or two of increasing `log_scales` that `scale` interpolates,
    linearly in log scale, clamped to the ends; exactly one at a listed scale."""
    x = min(max(math.log(scale), log_scales[0]), log_scales[-1])
    k = bisect.bisect_right(log_scales, x) - 1
    if k >= len(log_scales) - 1:
        return [(len(log_scales) - 1, 1.0)]
    a = (x - log_scales[k]) / (log_scales[k + 1] - log_scales[k])
    return [(j, wj) for j, wj in ((k, 1.0 - a), (k + 1, a)) if wj > 0]


class ScaleStats(nn.Module):
    """Running means and variances of `sizes` channels (BatchNorm layers, in order) at each of
    `scales`. A scale no batch has reached yet falls back on the layer's own statistics."""

    def __init__(self, scales: tuple[float, ...], sizes: list[int]):
        super().__init__()
        check_scales(scales, "scale_stats")
        self.sizes = list(sizes)
        #: where each layer's channels start in the rows of `means` and `vars`
        self.offsets = [0]
        for c in self.sizes:
            self.offsets.append(self.offsets[-1] + c)
        n, k = sum(sizes), len(scales)
        self.register_buffer("log_scales", torch.tensor([math.log(s) for s in scales], dtype=torch.float64))
        self.register_buffer("means", torch.zeros(k, n))
        self.register_buffer("vars", torch.ones(k, n))
        #: per scale and layer, the weight of the batches recorded (0: the layer's statistics serve)
        self.register_buffer("counts", torch.zeros(k, len(sizes), dtype=torch.float64))

    def weights(self, scale: float) -> list[tuple[int, float]]:
        """(scale index, weight) of the one or two scales that `scale` interpolates."""
        return log_scale_weights(self.log_scales.tolist(), scale)

    def norm(self, layers: list[nn.Module], scale: float, training: bool, affine: "ScaleAffine | None" = None):
        """The `norm(batch_norm, x)` that `DoubleConv.forward` takes for an image at `scale`:
        in training, the layer itself, its input's statistics recorded; otherwise, the layer
        with the statistics interpolated at `scale`. `affine` then applies its gain and shift
        at `scale`."""
        index = {id(m): i for i, m in enumerate(layers)}
        offsets, w = self.offsets, self.weights(scale)

        def run(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
            i = index[id(layer)]
            sl = slice(offsets[i], offsets[i + 1])
            if training:
                self._record(layer, x, i, sl, w)
                y = layer(x)
            else:
                mean, var = self._at(layer, i, sl, w)
                y = F.batch_norm(x, mean, var, layer.weight, layer.bias, False, 0.0, layer.eps)
            return y if affine is None else affine(y, sl, w)

        return run

    def _at(self, layer, i: int, sl: slice, w: list[tuple[int, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        own = [bool(self.counts[k, i] > 0) for k, _ in w]
        if not any(own):  # exactly the layer's own statistics
            return layer.running_mean, layer.running_var
        mean = torch.zeros_like(layer.running_mean)
        var = torch.zeros_like(layer.running_var)
        for (k, wk), mine in zip(w, own):
            mean = mean + wk * (self.means[k, sl] if mine else layer.running_mean)
            var = var + wk * (self.vars[k, sl] if mine else layer.running_var)
        return mean, var

    @torch.no_grad()
    def _record(self, layer, x: torch.Tensor, i: int, sl: slice, w: list[tuple[int, float]]) -> None:
        """An exponential moving average (the layer's momentum, x the scale's weight) that starts
        from the layer's own statistics, or with momentum None (as BatchNorm) a plain average."""
        xs = x.detach().float().transpose(0, 1).flatten(1)
        mean, var = xs.mean(1), xs.var(1, unbiased=xs.shape[1] > 1)
        for k, wk in w:
            if self.counts[k, i] == 0:
                self.means[k, sl] = layer.running_mean.float()
                self.vars[k, sl] = layer.running_var.float()
            a = wk / (float(self.counts[k, i]) + wk) if layer.momentum is None else layer.momentum * wk
            self.means[k, sl] += a * (mean - self.means[k, sl])
            self.vars[k, sl] += a * (var - self.vars[k, sl])
            self.counts[k, i] += wk


class ScaleAffine(nn.Module):
    """A learned gain and shift for each of the `n` channels of ScaleStats' rows at each of its
    scales (zero: the identity), applied as y * (1 + gain) + shift with both interpolated at
    the image's scale by ScaleStats' weights."""

    def __init__(self, k: int, n: int):
        super().__init__()
        self.gains = nn.Parameter(torch.zeros(k, n))
        self.shifts = nn.Parameter(torch.zeros(k, n))

    def forward(self, y: torch.Tensor, sl: slice, w: list[tuple[int, float]]) -> torch.Tensor:
        gain = sum(wk * self.gains[k, sl] for k, wk in w)
        shift = sum(wk * self.shifts[k, sl] for k, wk in w)
        return y * (1 + gain.to(y.dtype))[:, None, None] + shift.to(y.dtype)[:, None, None]
