"""Inference: a flow, optionally a learned prior, and the bookkeeping around them."""
from __future__ import annotations

import torch

from .errors import UsageError
from .flows.base import Flow
from .priors.tiling import predict_latent


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
    temperature `tau`; with one, the latent module's prediction replaces the sample.

    The prior runs on the whole latent map unless the map has more than
    `prior_max_pixels` positions (default 2^20, about 3 GB of UNet dim-64 activations;
    an HR image of about 9 MP with a 3x3 LINF); then it runs in overlapping `prior_tile`-sized
    tiles blended together."""

    def __init__(self, flow: Flow, prior=None, prior_max_pixels: int | None = 1 << 20,
                 prior_tile: int = 256, prior_overlap: int = 32, prior_margin: int = 32):
        if prior is not None and tuple(prior.latent_channels) != tuple(flow.latent_channels):
            raise UsageError(f"the latent module predicts latents of {list(prior.latent_channels)} channels but "
                             f"this {flow.kind} flow's latents have {list(flow.latent_channels)}: they do not belong together")
        self.flow = flow.eval()
        self.prior = prior.eval() if prior is not None else None
        self.prior_max_pixels, self.prior_tile = prior_max_pixels, prior_tile
        self.prior_overlap, self.prior_margin = prior_overlap, prior_margin

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
            latent = predict_latent(self.prior, self.flow.initial_prior(lr, ctx, self.prior.config.initial_prior), lr, self.prior_max_pixels,
                                    self.prior_tile, self.prior_overlap, self.prior_margin)
        else:
            if tau is None:
                tau = self.flow.default_tau(max(out_size[0] / lr.shape[-2], out_size[1] / lr.shape[-1]))
            latent = self.flow.sample_latent(ctx, tau, generator)
        return self.flow.decode(latent, ctx)
