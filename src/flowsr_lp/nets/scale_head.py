"""The scale head (ours, beyond the paper): beside its prediction mu, a latent module may
predict a positive scale sigma per latent element, from the same features, so that
N(mu, sigma^2) says where the HR may vary (a learned per-region temperature). The head
reads the generator's last features detached: its training (the Gaussian NLL of the HR's
true latent) never changes mu."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

#: log sigma is bounded to +-LOG_SIGMA_BOUND (sigma in [0.018, 54.6]) by a scaled tanh
LOG_SIGMA_BOUND = 4.0


class ScaleHead(nn.Module):
    """(generator features B x dim x H x W, the LR in [-1, 1] resized to H x W) -> log sigma
    (B x channels x H x W); starts at sigma = 1. The LR is its own input: where the image has
    texture is what sets the scale, and initial priors standardised per position (SRFlow's)
    no longer carry their local energy."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim + LR_CHANNELS, dim, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(dim, dim, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(dim, channels, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, features: torch.Tensor, lr_map: torch.Tensor) -> torch.Tensor:
        x = torch.cat([features.detach(), lr_map.to(features.dtype)], 1)
        return LOG_SIGMA_BOUND * torch.tanh(self.body(x) / LOG_SIGMA_BOUND)


#: channels of the LR map a scale head reads beside the generator's features
LR_CHANNELS = 3


def lr_map(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The LR (in [0, 1]) in [-1, 1], bilinearly resized to a latent map's size."""
    return F.interpolate((lr - 0.5) / 0.5, size, mode="bilinear", align_corners=False)


def gaussian_nll(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Mean over elements of -log N(z; mu, sigma^2) + log sqrt(2 pi) (mu is taken as given)."""
    return (log_sigma + 0.5 * ((z - mu.detach()) * torch.exp(-log_sigma)) ** 2).mean()


def split_prediction(outputs, channels) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """A module's raw outputs (per latent part: C channels of mu, or 2C of [mu, log sigma])
    -> (mu parts, log sigma parts or None)."""
    if all(o.shape[1] == c for o, c in zip(outputs, channels)):
        return tuple(outputs), None

    def part(o, sl):  # a dense copy in the output's layout, so what follows computes as without a head
        fmt = torch.channels_last if o.dim() == 4 and o.is_contiguous(memory_format=torch.channels_last) else \
            torch.contiguous_format
        return o[:, sl].contiguous(memory_format=fmt)

    return (tuple(part(o, slice(0, c)) for o, c in zip(outputs, channels)),
            tuple(part(o, slice(c, None)) for o, c in zip(outputs, channels)))


#: parts a trained module can grow without changing its output at first (their names' prefixes)
GROWN = ("scale_head", "refine", "scale_stats", "scale_affine", "specialists", "residual")


def with_config(prior: nn.Module, **changes) -> nn.Module:
    """A copy of a trained latent module with its config changed (`scale_head=True` grows a
    new head, sigma = 1 to start; LINF-LP's `refine=True` grows a second UNet whose
    contribution to mu starts at zero; LINF-LP's `scale_stats` adds BatchNorm statistics per
    scale, unused until recorded, `scale_affine` a gain and shift per scale that start at
    the identity, and `specialists` copies of the module (its weights and buffers, grown parts
    included); `residual_reach` (and LINF-LP's `residual_scales`) a residual correlation that
    starts at independence, replacing the module's own (fitted in closed form, never trained);
    `lr_input` changes what its LR branch reads): every
    weight and buffer carried over exactly, so with only grown parts the output is unchanged.
    Changes that would drop or reshape a trained weight are refused."""
    config = prior.config
    grown = type(prior)(type(config).from_dict({**config.to_dict(), **changes}))  # lists become tuples
    grown.to(next(prior.parameters()).device)
    own = prior.state_dict()
    shapes = {k: tuple(v.shape) for k, v in grown.state_dict().items()}
    if {"residual_reach", "residual_scales"} & set(changes):  # a new correlation replaces the old one
        own = {k: v for k, v in own.items() if not k.startswith("residual.")}
    reshaped = [k for k, v in own.items() if k in shapes and shapes[k] != tuple(v.shape)]
    missing = [k for k in shapes if k not in own]
    unexpected = [k for k in own if k not in shapes]
    if reshaped or unexpected or not all(k.startswith(GROWN) for k in missing):
        raise ValueError(f"cannot change {sorted(changes)} of this module: it would reshape {reshaped}, "
                         f"drop {unexpected} and add {[k for k in missing if not k.startswith(GROWN)]}")
    grown.load_state_dict(own, strict=False)
    state = grown.state_dict()  # a new specialist starts as a copy of the module
    copies = {k: state[k.split(".", 2)[2]] for k in missing if k.startswith("specialists.")}
    grown.load_state_dict({**state, **copies})
    return grown.train(prior.training)


def with_recipe_changes(prior: nn.Module, spec: dict) -> nn.Module:
    """A started module (a recipe's `prior: {checkpoint, config: {...}, scale_head: true}`) with
    the config changes the recipe asks for, through `with_config`; unchanged if none."""
    changes = {**spec.get("config", {}), **({"scale_head": True} if spec.get("scale_head") else {})}
    changes = {k: v for k, v in changes.items() if getattr(prior.config, k, object()) != v}
    return with_config(prior, **changes) if changes else prior


def with_scale_head(prior: nn.Module) -> nn.Module:
    """A copy of a trained latent module with a new scale head (see `with_config`)."""
    return with_config(prior, scale_head=True)


def check_parts(latent, channels, what: str = "latent module") -> None:
    """Raise `UsageError` unless `latent` is a tuple of B x C x H x W maps with the channels a
    latent module predicts (one per part), instead of a convolution's shape error."""
    from ..errors import UsageError

    got = [tuple(z.shape) for z in latent] if isinstance(latent, (tuple, list)) else None
    if got is None or len(got) != len(channels) or any(len(s) != 4 or s[1] != c for s, c in zip(got, channels)):
        raise UsageError(f"this {what} takes {len(channels)} latent part(s) of {list(channels)} channels "
                         f"(B x C x H x W); got {got if got is not None else type(latent).__name__}")
