"""Training objectives as modules: `forward(batch) -> (loss, {name: value})`. Wrapping the
objective (not the model) in DistributedDataParallel keeps flows' non-`forward` methods
(condition / encode / decode) inside one synchronised forward call."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.scale_head import gaussian_nll
from .config import PIXEL_LOSSES


def _window_of(batch: dict) -> tuple | None:
    w = batch.get("window")
    return tuple(int(v) for v in w) if w is not None else None


def _crop(hr: torch.Tensor, window) -> torch.Tensor:
    if window is None:
        return hr
    t, l, h, w = window
    return hr[..., t : t + h, l : l + w]


class FlowNLL(nn.Module):
    """Maximum likelihood (LINF stage 1, SRFlow): the flow's NLL of the HR given the LR."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, batch: dict):
        hr = batch["hr"]
        ctx = self.flow.condition(batch["lr"], tuple(hr.shape[-2:]))
        _, log_p = self.flow.encode(hr, ctx)
        nll = self.flow.nll(log_p, ctx).mean()
        return nll, {"nll": nll.detach()}


class LINFFinetune(nn.Module):
    """LINF's second stage: steps alternate between the NLL (weighted `nll_weight`) and a
    pixel L1 + perceptual loss on the temperature-0 output (the conditional mean)."""

    #: what a step computes depends on batch["step"] (even / odd)
    alternates = True

    def __init__(self, flow, perceptual: nn.Module | None, nll_weight: float = 5e-4, perceptual_weight: float = 1.0):
        super().__init__()
        self.flow, self.perceptual = flow, perceptual
        self.nll_weight, self.perceptual_weight = nll_weight, perceptual_weight

    def forward(self, batch: dict):
        hr = batch["hr"]
        ctx = self.flow.condition(batch["lr"], tuple(hr.shape[-2:]))
        if batch["step"] % 2 == 0:
            _, log_p = self.flow.encode(hr, ctx)
            nll = self.flow.nll(log_p, ctx).mean()
            return self.nll_weight * nll, {"nll": nll.detach()}
        sr = self.flow.decode(self.flow.sample_latent(ctx, 0.0), ctx)
        l1 = (sr - hr).abs().mean()
        loss, logs = l1, {"l1": l1.detach()}
        if self.perceptual is not None:
            p = self.perceptual(sr, hr)
            loss = loss + self.perceptual_weight * p
            logs["percep"] = p.detach()
        return loss, logs


class PriorObjective(nn.Module):
    """FlowSR-LP: L = L_percep + lambda * L_latent (+ pixel L1 or L2 / gradient L1 when asked), with the flow
    frozen; gradients reach the latent module through the flow's inverse only. A module with a
    scale head (nets/scale_head.py) also gets `scale_weight` x the Gaussian NLL of the HR's true
    latent under N(mu, sigma^2); that term trains sigma only (mu is taken as given, and the head
    reads detached features). `scale_only`: only the head learns, by that NLL alone; the rest
    of the module stays in eval mode (BatchNorm statistics frozen, so mu is unchanged bit for
    bit) and the flow's inverse is skipped.

    `flow_nll_weight` (ours, beyond the paper; None keeps the flow frozen): a joint fine-tune.
    Steps alternate, as in LINF's second stage: even steps train the flow alone by its NLL
    (x `flow_nll_weight`), odd steps train module and flow together by the losses above, the
    flow's gradient coming through its inverse of the module's prediction. The flow keeps a
    likelihood while it learns to decode the module's latents; at tau 0 it is never trained."""

    def __init__(self, flow, prior: nn.Module, perceptual: nn.Module | None, latent_weight: float = 0.0,
                 pixel_weight: float = 0.0, autocast: str = "none", gradient_weight: float = 0.0,
                 scale_weight: float = 1.0, scale_only: bool = False, flow_nll_weight: float | None = None,
                 pixel_loss: str = "l1"):
        super().__init__()
        self.prior = prior
        self.flow_nll_weight = flow_nll_weight
        #: what a step computes depends on batch["step"] (even / odd) when the flow trains too
        self.alternates = flow_nll_weight is not None
        self.flow = flow.eval().requires_grad_(self.alternates)
        self.perceptual = perceptual
        self.latent_weight, self.pixel_weight, self.gradient_weight = latent_weight, pixel_weight, gradient_weight
        if pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"pixel_loss must be one of {PIXEL_LOSSES}, not {pixel_loss!r}")
        self.pixel_loss = pixel_loss
        self.scale_weight = scale_weight if getattr(prior.config, "scale_head", False) else 0.0
        self.autocast = autocast
        self.head_only = scale_only
        if scale_only and not self.scale_weight > 0:
            raise ValueError("loss.scale_only needs a latent module with a scale head and scale_weight > 0")
        if scale_only and self.alternates:
            raise ValueError("loss.scale_only trains the scale head alone: it cannot train the flow too")

    def train(self, mode: bool = True):  # the flow stays in eval mode whatever happens
        super().train(mode)
        self.flow.eval()
        if self.head_only:
            self.prior.eval()
            for name, m in self.prior.named_children():
                if name.startswith("scale_head"):
                    m.train(mode)
        return self

    def _amp(self, device: torch.device):
        if self.autocast == "none" or device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.autocast == "bf16" else torch.float16)

    def forward(self, batch: dict):
        lr, window = batch["lr"], _window_of(batch)
        hr = _crop(batch["hr"], window)
        with torch.set_grad_enabled(self.alternates and torch.is_grad_enabled()):
            ctx = self.flow.condition(lr, tuple(batch["hr"].shape[-2:]), **({"window": window} if window else {}))
        if self.alternates and batch["step"] % 2 == 0:  # the flow's likelihood step
            nll = self.flow.nll(self.flow.encode(hr, ctx)[1], ctx).mean()
            return self.flow_nll_weight * nll, {"nll": nll.detach()}
        with torch.no_grad():
            z0 = self.flow.initial_prior(lr, ctx, self.prior.config.initial_prior)
            z_gt = self.flow.encode(hr, ctx)[0] if self.latent_weight > 0 or self.scale_weight > 0 else None
        with self._amp(lr.device):
            z_hat, log_sigma = self.prior.distribution(z0, lr)
        z_hat = tuple(z.float() for z in z_hat)
        loss, logs = z_hat[0].new_zeros(()), {}
        if self.scale_weight > 0:
            nll = sum(gaussian_nll(z, m, ls.float()) for z, m, ls in zip(z_gt, z_hat, log_sigma)) / len(z_gt)
            loss, logs["scale_nll"] = loss + self.scale_weight * nll, nll.detach()
        if self.head_only:
            return loss, logs
        sr = self.flow.decode(z_hat, ctx)  # the flow in float32: its inverse amplifies rounding
        if self.perceptual is not None:
            with self._amp(lr.device):
                p = self.perceptual(sr, hr).float()
            loss, logs["percep"] = loss + p, p.detach()
        if self.pixel_weight > 0:  # l2: the mean squared error, whose log is PSNR
            d = ((sr - hr).abs() if self.pixel_loss == "l1" else (sr - hr).square()).mean()
            loss, logs[self.pixel_loss] = loss + self.pixel_weight * d, d.detach()
        if self.gradient_weight > 0:  # L1 between image gradients: seams the HR lacks cost extra
            g = sum((sr.diff(dim=d) - hr.diff(dim=d)).abs().mean() for d in (-1, -2))
            loss, logs["grad"] = loss + self.gradient_weight * g, g.detach()
        if self.latent_weight > 0:
            lat = sum(F.l1_loss(a, b) for a, b in zip(z_hat, z_gt)) / len(z_gt)
            loss, logs["latent"] = loss + self.latent_weight * lat, lat.detach()
        logs["finite"] = torch.isfinite(sr).all().float()
        return loss, logs
