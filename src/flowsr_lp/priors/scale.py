"""The scale head (ours, beyond the paper): beside its prediction mu, a latent module may
predict a positive scale sigma per latent element, from the same features, so that
N(mu, sigma^2) says where the HR may vary (a learned per-region temperature). The head
reads the generator's last features detached: its training (the Gaussian NLL of the HR's
true latent) never changes mu."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

#: log sigma is bounded to +-LOG_SIGMA_BOUND (sigma in [0.018, 54.6]) by a scaled tanh
LOG_SIGMA_BOUND = 4.0


class ScaleHead(nn.Module):
    """features (B x dim x H x W) -> log sigma (B x channels x H x W); starts at sigma = 1."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(dim, channels, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return LOG_SIGMA_BOUND * torch.tanh(self.body(features.detach()) / LOG_SIGMA_BOUND)


def gaussian_nll(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Mean over elements of -log N(z; mu, sigma^2) + log sqrt(2 pi) (mu is taken as given)."""
    return (log_sigma + 0.5 * ((z - mu.detach()) * torch.exp(-log_sigma)) ** 2).mean()


def split_prediction(outputs, channels) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """A module's raw outputs (per latent part: C channels of mu, or 2C of [mu, log sigma])
    -> (mu parts, log sigma parts or None)."""
    if all(o.shape[1] == c for o, c in zip(outputs, channels)):
        return tuple(outputs), None
    return tuple(o[:, :c] for o, c in zip(outputs, channels)), tuple(o[:, c:] for o, c in zip(outputs, channels))


def with_scale_head(prior: nn.Module) -> nn.Module:
    """A copy of a trained latent module with a new scale head (sigma = 1 to start): every
    other weight and buffer carried over exactly, so mu is unchanged."""
    grown = type(prior)(dataclasses.replace(prior.config, scale_head=True))
    grown.to(next(prior.parameters()).device)
    missing, unexpected = grown.load_state_dict(prior.state_dict(), strict=False)
    if unexpected or not all(k.startswith("scale_head") for k in missing):
        raise ValueError(f"cannot grow a scale head on this module: missing {missing}, unexpected {unexpected}")
    return grown.train(prior.training)
