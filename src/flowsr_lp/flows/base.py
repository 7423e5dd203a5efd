"""The one interface every flow SR model exposes.

Images cross this boundary in [0, 1], B x 3 x H x W. A *latent* is a tuple of tensors
(LINF: one map; SRFlow: the split latents then the top z). Decoders never clamp: a
caller that wants displayable pixels clamps, and can check for non-finite values first
(the exploding inverse) before it does.
"""
from __future__ import annotations

import abc
import numbers
from typing import Any

import torch
from torch import nn

Latent = tuple[torch.Tensor, ...]


def checked_size(size, what: str = "output size") -> tuple[int, int]:
    """(H, W) as two positive integers; floats (even 1e9) are a TypeError, not truncated."""
    try:
        h, w = size
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be (H, W), two positive integers, got {size!r}") from None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (h, w)):
        raise TypeError(f"{what} must be two integers, got {size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {(int(h), int(w))}")
    return int(h), int(w)


class Flow(nn.Module, abc.ABC):
    #: short name of the family ("linf", "linf-patch", "srflow")
    kind: str = ""
    #: the dataclass the model was built from; saved next to the weights
    config: Any
    #: log of d(internal value) / d(image value) per sub-pixel: `encode`'s log p is a density
    #: of the image in the flow's own range (LINF: 2x - 1, so ln 2); 0 for images in [0, 1]
    internal_log_scale: float = 0.0

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

    def density_context(self, lr: torch.Tensor, out_size: tuple[int, int]):
        """(LR, context, (h, w)) for the largest top-left HR region of an `out_size` image whose
        density this flow computes without padding: `encode` of that region under the context
        is then an exact log p(region | LR). The whole image unless a family overrides it."""
        return lr, self.condition(lr, out_size), tuple(out_size)

    def sample_latent(self, ctx, tau: float, generator=None) -> Latent:
        """z ~ N(0, tau^2) for every part of the latent (`sample_noise` of `latent_shapes(ctx)`)."""
        return sample_noise(self.latent_shapes(ctx), tau, generator, *self.device_dtype())

    # ---- argument checks: one clear error instead of a failure deep inside a convolution ----
    def checked_images(self, x, what: str, size: tuple[int, int] | list[tuple[int, int]] | None = None,
                       batch: int | None = None) -> torch.Tensor:
        """`x` as B x 3 x H x W in the flow's float dtype (float64 / float16 / bfloat16 are
        converted); uint8 and other integer tensors, wrong ranks, channel counts, empty
        batches and (with `size`, one (H, W) or a list of those allowed, and `batch`) the
        wrong size are TypeError / ValueError."""
        expect = "a B x 3 x H x W float tensor in [0, 1]"
        if not torch.is_tensor(x):
            raise TypeError(f"{what} must be {expect}, got {type(x).__name__}")
        if x.dtype == torch.uint8:
            raise TypeError(f"{what} is uint8: pass floats in [0, 1] (x.float() / 255), or give the image to "
                            "SuperResolver, which converts it")
        if not x.is_floating_point():
            raise TypeError(f"{what} must be {expect}, got dtype {x.dtype}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{what} must be {expect}, got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{what} is empty: shape {tuple(x.shape)}")
        sizes = [tuple(size)] if size is not None and not isinstance(size, list) else [tuple(s) for s in size or []]
        if sizes and tuple(x.shape[-2:]) not in sizes:
            raise ValueError(f"{what} is {x.shape[-2]}x{x.shape[-1]} but this context is for {sizes[0][0]}x{sizes[0][1]}")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"{what} holds {x.shape[0]} images but this context was made for {batch}")
        dtype = self.device_dtype()[1]
        return x if x.dtype == dtype else x.to(dtype)

    def checked_latent(self, latent, ctx) -> Latent:
        """`latent` as a tuple of tensors of exactly `latent_shapes(ctx)`, in the flow's dtype."""
        expected = [tuple(s) for s in self.latent_shapes(ctx)]
        if not isinstance(latent, (tuple, list)) or not all(torch.is_tensor(z) for z in latent):
            raise TypeError(f"a {self.kind} latent is a tuple of {len(expected)} tensor(s) of shapes {expected}, "
                            f"got {type(latent).__name__}")
        got = [tuple(z.shape) for z in latent]
        if got != expected:
            raise ValueError(f"latent of shapes {got} does not fit this context: expected {expected}")
        if not all(z.is_floating_point() for z in latent):
            raise TypeError(f"latent tensors must be floating point, got {[z.dtype for z in latent]}")
        dtype = self.device_dtype()[1]
        return tuple(z if z.dtype == dtype else z.to(dtype) for z in latent)

    def device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.parameters())
        return p.device, p.dtype


def sample_noise(shapes, tau: float, generator, device, dtype) -> Latent:
    """z ~ N(0, tau^2) of each shape. `generator`: a torch.Generator (or None: torch's global
    one), or a list of them, one per batch item: item i then gets the noise a batch of one
    would draw from generator i (batching leaves a seeded image as it is)."""
    out = []
    for shape in shapes:
        if isinstance(generator, (list, tuple)):
            if len(generator) != shape[0]:
                raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
            z = torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype).to(device)
                           for g in generator])
        else:
            gen_device = generator.device if generator is not None else device
            z = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
        out.append(z * tau)
    return tuple(out)
