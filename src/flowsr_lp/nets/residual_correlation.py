"""The residual's correlation (ours, beyond the paper): the scale head makes the samples
around the prior N(mu, (t sigma)^2), independent per latent element. But the HR's true
latent z* departs from mu in a correlated way: across a position's channels, and across
neighbouring positions (for LINF, neighbouring 3x3 patches: texture continues over their
borders). Independent noise per position is what draws the patch seams of a grid.

This module models the standardised residual u = (z - mu) / sigma of each latent part as a
causal Gaussian autoregression over positions in raster order:

    u[p] = sum over causal neighbours q of p (rows above within `reach`, and the `reach`
           positions to the left):  A[q - p] u[q]  +  L e[p],    e ~ N(0, I)

with A a C x C matrix per neighbour offset and L lower triangular with a positive diagonal;
positions outside the map hold u = 0. The map e -> u is triangular (raster order), so
- the density is exact and parallel: e = L^-1 (u - sum A u[q]), log |du/de| = H W sum log L_ii
  (`whiten`);
- sampling solves the recursion along wavefronts of positions that depend on none of each
  other (`color`): (reach + 1) (H - 1) + W steps of small products, not H W.
A, L are fitted in closed form (least squares, the Gaussian maximum likelihood) from the
residuals of training images (`moments` summed over images, then `fit_`). A = 0, L = I, as
the module starts, is independence: the scale head's N(mu, sigma^2) exactly.

Each latent part has its own reach; reach 0 correlates a position's channels only (no A).
(On SRFlow's coarse part, noise correlated over positions makes 15 % of the draws at t = 1
overflow the inverse on B100; over channels alone, 0 to 2.5 %: benchmarks/README.md.)
An arbitrary-scale module keeps one correlation per scale (`ScaleCorrelations`): LINF's
residual at x2 is correlated unlike at x4 (on 10 B100 images an x4 fit explains x2 0.004
bits/dim better than independence, an x2 fit 0.096).

Images whose residual is unlike the training images' (sensor noise, JPEG blocks, aliased
stripes: white where the fit expects it smooth) are explained worse by the correlated Gaussian
than by the independent one, by several bits/dim. So the samples around the prior mix the two:
each draw is independent noise with probability `INDEPENDENT_WEIGHT` (about one in a million)
and correlated otherwise, and their density is that mixture's, never more than
-log2(1 - INDEPENDENT_WEIGHT) or 20 bits per image above the better of the two."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .scale_stats import check_scales, log_scale_weights


#: the probability that a draw around the prior is independent noise (module docstring)
INDEPENDENT_WEIGHT = 2.0 ** -20


def causal_offsets(reach: int) -> list[tuple[int, int]]:
    """(dy, dx) of the neighbours a position depends on: every position of the `reach` rows
    above within `reach` columns either side, and the `reach` positions to its left."""
    return [(dy, dx) for dy in range(-reach, 1) for dx in range(-reach, reach + 1) if dy < 0 or dx < 0]


class ResidualCorrelation(nn.Module):
    """Per latent part i (channels C_i, reach R_i): buffers `weight{i}` (K_i x C_i x C_i,
    neighbour k's input channel by output channel) and `cholesky{i}` (C_i x C_i), K_i =
    len(causal_offsets(R_i)). `reach` is one positive integer for every part, or one integer
    >= 0 per part."""

    def __init__(self, reach: int | Sequence[int], channels: Sequence[int]):
        super().__init__()
        self.channels = tuple(channels)
        if isinstance(reach, int) and not isinstance(reach, bool) and reach >= 1:
            reach = (reach,) * len(self.channels)
        elif isinstance(reach, Sequence) and len(reach) == len(self.channels) and \
                all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in reach):
            reach = tuple(reach)
        else:
            raise ValueError(f"the residual correlation's reach is a positive integer or one integer >= 0 per latent "
                             f"part ({len(self.channels)}), got {reach!r}")
        self.reach = reach
        self.offsets = [causal_offsets(r) for r in reach]
        for i, c in enumerate(self.channels):
            self.register_buffer(f"weight{i}", torch.zeros(len(self.offsets[i]), c, c))
            self.register_buffer(f"cholesky{i}", torch.eye(c))

    def at(self, scale: float) -> "ResidualCorrelation":
        """The correlation for an image at `scale`: this one, at every scale."""
        return self

    def fitted(self, scale: float) -> list[tuple[float, "ResidualCorrelation"]]:
        """(scale to fit at, correlation) pairs that `stage: correlate` fits: this one, at `scale`."""
        return [(scale, self)]

    def parts(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(A, L) per latent part, in float64."""
        return [(getattr(self, f"weight{i}").double(), getattr(self, f"cholesky{i}").double())
                for i in range(len(self.channels))]

    def _shifted(self, u: torch.Tensor, part: int) -> list[torch.Tensor]:
        """B x H x W x C -> each causal neighbour's value at every position, one map per offset
        of latent part `part` (0 outside the map)."""
        r, (h, w) = self.reach[part], u.shape[1:3]
        p = F.pad(u, (0, 0, r, r, r, 0))
        return [p[:, r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in self.offsets[part]]

    def whiten(self, us: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(e per part, log |de/du| per batch item): the unit noise that colors into `us`, in
        float64."""
        es, log_det = [], 0
        for i, (u, (a, chol)) in enumerate(zip(us, self.parts())):
            a, chol = a.to(u.device), chol.to(u.device)
            h, w = u.shape[-2:]
            u = u.double().permute(0, 2, 3, 1)  # B x H x W x C
            pred = sum(s @ a_k for s, a_k in zip(self._shifted(u, i), a))  # 0 without neighbours
            inverse = torch.linalg.solve_triangular(chol, torch.eye(len(chol), dtype=chol.dtype, device=chol.device),
                                                    upper=False)
            es.append(((u - pred) @ inverse.T).permute(0, 3, 1, 2))
            log_det = log_det - h * w * torch.log(torch.diagonal(chol)).sum()
        return es, torch.as_tensor(log_det, dtype=torch.float64).expand(len(us[0]))

    def color(self, es: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The correlated residuals u of unit noise `es` (per part, B x C x H x W), computed in
        float64 and returned in each noise's dtype. Linear: color(t e) = t color(e). Each batch
        item is computed on its own, so it gets what it gets alone, bit for bit."""
        return [torch.stack([self._color_one(e[b], a, chol, i).to(e.dtype) for b in range(len(e))])
                for i, (e, (a, chol)) in enumerate(zip(es, self.parts()))]

    def _color_one(self, e: torch.Tensor, a: torch.Tensor, chol: torch.Tensor, part: int) -> torch.Tensor:
        """One item's C x H x W unit noise -> its correlated residual (float64). The map is kept
        flat with a zero border (`reach` rows above, `reach` columns either side); each wave
        gathers its positions' K neighbours in one indexing."""
        r, (c, h, w) = self.reach[part], e.shape
        a, chol = a.to(e.device).flatten(0, 1), chol.to(e.device)
        le = torch.einsum("dc,chw->hwd", chol, e.double()).reshape(h * w, c)
        if not r:  # channels only: every position on its own
            return le.T.reshape(c, h, w)
        wide = w + 2 * r
        buf = torch.zeros((h + r) * wide, c, dtype=torch.float64, device=e.device)
        ii, jj = torch.meshgrid(torch.arange(h, device=e.device), torch.arange(w, device=e.device), indexing="ij")
        wave = ((r + 1) * ii + jj).flatten()  # every neighbour of a position lies on an earlier wave
        order = torch.argsort(wave, stable=True)
        own = ((ii + r) * wide + jj + r).flatten()[order]  # each position's place in the bordered map
        shifts = torch.tensor([dy * wide + dx for dy, dx in self.offsets[part]], device=e.device)
        neighbours = own[:, None] + shifts  # (H W) x K
        start = 0
        for n in torch.bincount(wave).tolist():
            sl = slice(start, start + n)
            start += n
            buf[own[sl]] = buf[neighbours[sl]].flatten(1) @ a + le[order[sl]]
        return buf.view(h + r, wide, c)[r:, r:r + w].permute(2, 0, 1)

    def moments(self, us: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
        """Per part, the sums the fit needs from residual maps `us`: (X'X, X'Y, Y'Y, count)
        with X the causal neighbours and Y the residual of every position. Add them up over
        images, then `fit_`."""
        out = []
        for i, u in enumerate(us):
            u = u.double().permute(0, 2, 3, 1)
            y = u.flatten(0, 2)
            x = torch.cat(self._shifted(u, i), -1).flatten(0, 2) if self.reach[i] else y[:, :0]
            out.append((x.T @ x, x.T @ y, y.T @ y, torch.tensor(float(len(y)), dtype=torch.float64)))
        return out

    @torch.no_grad()
    def fit_(self, moments: Sequence[tuple[torch.Tensor, ...]], ridge: float = 1e-6) -> "ResidualCorrelation":
        """Set A and L to the least-squares (Gaussian maximum-likelihood) fit of summed
        `moments`: A = (X'X)^-1 X'Y, L = cholesky of the prediction error's covariance."""
        for i, (xtx, xty, yty, n) in enumerate(moments):
            k = xtx.shape[0]
            a = torch.linalg.solve(xtx + ridge * n * torch.eye(k, dtype=xtx.dtype, device=xtx.device), xty)
            cov = (yty - xty.T @ a - a.T @ xty + a.T @ xtx @ a) / n
            cov = (cov + cov.T) / 2
            chol = torch.linalg.cholesky(cov)
            getattr(self, f"weight{i}").copy_(a.view(len(self.offsets[i]), *chol.shape))
            getattr(self, f"cholesky{i}").copy_(chol)
        return self


class ScaleCorrelations(nn.Module):
    """One `ResidualCorrelation` per scale of `scales` (`per_scale`, each fitted at its scale);
    for an image at another scale, their A and L interpolated linearly in log scale, clamped to
    the ends (as `ScaleStats` interpolates BatchNorm statistics). An interpolated L is still
    lower triangular with a positive diagonal, so the density stays exact at every scale."""

    def __init__(self, scales: Sequence[float], reach: int | Sequence[int], channels: Sequence[int]):
        super().__init__()
        check_scales(scales, "residual_scales")
        self.scales = tuple(float(s) for s in scales)
        self.log_scales = [math.log(s) for s in self.scales]
        self.per_scale = nn.ModuleList(ResidualCorrelation(reach, channels) for _ in self.scales)
        self.reach, self.channels = self.per_scale[0].reach, self.per_scale[0].channels

    def at(self, scale: float) -> ResidualCorrelation:
        w = log_scale_weights(self.log_scales, scale)
        if len(w) == 1:  # a fitted scale (or beyond the ends): that fit itself
            return self.per_scale[w[0][0]]
        mixed = ResidualCorrelation(self.reach, self.channels).to(self.per_scale[0].cholesky0.device)
        for name, buf in mixed.named_buffers():
            buf.copy_(sum(wk * self.per_scale[k].get_buffer(name) for k, wk in w))
        return mixed

    def fitted(self, scale: float | None = None) -> list[tuple[float, ResidualCorrelation]]:
        """Each scale's correlation, fitted at its own scale (`scale` is not used)."""
        return list(zip(self.scales, self.per_scale))


def sum_moments(total, new):
    """Add `moments` of one more batch to a running total (None to start)."""
    return list(new) if total is None else [tuple(a + b for a, b in zip(t, m)) for t, m in zip(total, new)]
