"""Invertible building blocks. Each is a pair of exact inverses returning log-determinants:
`forward(x, ...) -> (y, logdet)` and `inverse(y, ...) -> (x, logdet)`, where the inverse's
log-det is the negative of the forward one, summed per batch item (or per row for
vector-valued layers)."""
from __future__ import annotations

import torch
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
