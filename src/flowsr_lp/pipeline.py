"""Inference: a flow, optionally a learned prior, and the bookkeeping around them."""
from __future__ import annotations

import torch

from .flows.base import Flow


def output_size(lr_hw: tuple[int, int], scale: float | tuple[float, float]) -> tuple[int, int]:
    """HR size for an LR size and a (possibly anisotropic) scale: round(h * s)."""
    sh, sw = (scale, scale) if isinstance(scale, (int, float)) else scale
    if not (sh > 0 and sw > 0):
        raise ValueError(f"scale must be positive, got {scale}")
    H, W = round(lr_hw[0] * sh), round(lr_hw[1] * sw)
    if H < 1 or W < 1:
        raise ValueError(f"scale {scale} gives an empty output for a {lr_hw[0]}x{lr_hw[1]} input")
    return H, W


def finite_mask(sr: torch.Tensor) -> torch.Tensor:
    """Per batch item: True where the decoded image has only finite values (no exploding
    inverse). Check this before clamping: clamping turns inf into valid-looking pixels."""
    return torch.isfinite(sr.flatten(1)).all(1)


class SuperResolver:
    """`flow` + optional learned `prior`. Without a prior the latent is sampled at
    temperature `tau`; with one, the latent module's prediction replaces the sample."""

    def __init__(self, flow: Flow, prior=None):
        self.flow = flow.eval()
        self.prior = prior.eval() if prior is not None else None

    @property
    def device(self) -> torch.device:
        return next(self.flow.parameters()).device

    @torch.no_grad()
    def upscale(self, lr: torch.Tensor, out_size: tuple[int, int] | None = None, *,
                scale: float | tuple[float, float] | None = None, tau: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """LR (B x 3 x h x w in [0, 1]) -> SR, raw (unclamped; may hold inf/NaN when the
        flow's inverse explodes: see `finite_mask`)."""
        if (out_size is None) == (scale is None):
            raise ValueError("give exactly one of out_size and scale")
        lr = lr.to(self.device)
        if lr.dim() == 3:
            lr = lr.unsqueeze(0)
        if out_size is None:
            out_size = output_size(tuple(lr.shape[-2:]), scale)
        ctx = self.flow.condition(lr, out_size)
        if self.prior is not None:
            latent = self.prior(self.flow.initial_prior(lr, ctx), lr)
        else:
            if tau is None:
                tau = self.flow.default_tau(max(out_size[0] / lr.shape[-2], out_size[1] / lr.shape[-1]))
            latent = self.flow.sample_latent(ctx, tau, generator)
        return self.flow.decode(latent, ctx)
