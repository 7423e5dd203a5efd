"""The one interface every flow SR model exposes.

Images cross this boundary in [0, 1], B x 3 x H x W. A *latent* is a tuple of tensors
(LINF: one map; SRFlow: the split latents then the top z). Decoders never clamp: a
caller that wants displayable pixels clamps, and can check for non-finite values first
(the exploding inverse) before it does.
"""
from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

Latent = tuple[torch.Tensor, ...]


class Flow(nn.Module, abc.ABC):
    #: short name of the family ("linf", "linf-patch", "srflow")
    kind: str = ""
    #: the dataclass the model was built from; saved next to the weights
    config: Any

    @abc.abstractmethod
    def condition(self, lr: torch.Tensor, out_size: tuple[int, int]) -> Any:
        """Everything that depends only on the LR image and the output size."""

    @abc.abstractmethod
    def encode(self, hr: torch.Tensor, ctx) -> tuple[Latent, torch.Tensor]:
        """HR image -> (latent, log-likelihood of each image in nats, shape (B,))."""

    @abc.abstractmethod
    def decode(self, latent: Latent, ctx) -> torch.Tensor:
        """Latent -> HR image (raw values, not clamped; differentiable)."""

    @abc.abstractmethod
    def latent_shapes(self, ctx) -> list[tuple[int, ...]]:
        """Shapes of the tensors that make up a latent for this context."""

    @abc.abstractmethod
    def initial_prior(self, lr: torch.Tensor, ctx, kind: str = "paper") -> Latent:
        """The latent of the upsampled LR image: the latent module's starting point. `kind`
        names the variant (a latent module's `config.initial_prior`); "paper" is FlowSR-LP's."""

    @property
    @abc.abstractmethod
    def latent_channels(self) -> tuple[int, ...]:
        """Channels of each latent part (what a latent module must predict)."""

    @abc.abstractmethod
    def nll(self, log_p: torch.Tensor, ctx) -> torch.Tensor:
        """The flow's conventional training NLL per image from `encode`'s log p."""

    def default_tau(self, scale: float) -> float:
        """The temperature the flow's authors recommend at this scale."""
        return 0.8

    def sample_latent(self, ctx, tau: float, generator: torch.Generator | None = None) -> Latent:
        """z ~ N(0, tau^2) for every part of the latent."""
        device, dtype = self.device_dtype()
        out = []
        for shape in self.latent_shapes(ctx):
            gen_device = generator.device if generator is not None else device
            z = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
            out.append(z.to(device) * tau)
        return tuple(out)

    def device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.parameters())
        return p.device, p.dtype
