"""HCFlow (Liang et al., ICCV 2021, "Hierarchical Conditional Flow"), SR at x4 or x8.

The flow runs the other way round from SRFlow: the HR image (in [0, 1], no rescaling) goes
*down* to a fake LR. Each level squeezes 2x, runs plain flow steps (ActNorm, invertible 1x1
conv, affine coupling without a condition) and splits: the kept channels go on, the rest
(`a_l`) leave the flow; at the last level 3 channels are kept, the fake LR. Each split-off
part is modelled by a conditional flow: RRDB features of the coarser result (the fake LR at
the top; below, the kept map next to the nearest-upsampled features of every coarser level),
more flow steps conditioned on them, then a Gaussian whose mean and log-std come from the
features. Its standardised noise `eps_l` is the latent part; the latent is coarsest first.

log p(hr | lr) = the forward log-det (with the split parts' Gaussian log-densities) + the
"Dirac" LR term, log N(lr; fake_lr, exp(-6)^2): the LR is not a latent, it is the top of the
reverse pass, which starts from the true LR.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model_config import ModelConfig
from ..nets.rrdb import RRDB
from ..precision import float32_transform
from .base import Flow, Latent
from .layers import (ActNorm, CachingLayer, Conv2dZeros, ConvActNorm, InvConv1x1, InvertibleLayer, Squeeze,
                     chain, chain_inverse, gaussian_log_p)

#: log-std of upstream's "Dirac" Gaussian around the fake LR
DIRAC_LOGS = -6.0
#: the coupling's bounded log-scale: 0.318 * atan(2 s) (|log-scale| < 0.5)
ATAN_GAIN, ATAN_SLOPE = 0.318, 2.0


@dataclass
class HCFlowConfig(ModelConfig):
    scale: int = 4  # 4 (2 levels) or 8 (3 levels)
    K: int = 26  # flow steps per level: plain ones, then `after_split` in the conditional flow
    after_split: tuple[int, ...] = (13, 13)  # conditional steps per level (one value per level)
    hidden_channels: int = 64  # plain steps' coupling width
    split_hidden_channels: int = 64  # conditional steps' coupling width
    rrdb_nb: tuple[int, int] = (7, 7)  # RRDB blocks of the two trunks of each conditional network
    nf: int = 64
    gc: int = 32

    @property
    def L(self) -> int:
        return int(math.log2(self.scale))

    def validate(self) -> "HCFlowConfig":
        if self.scale not in (4, 8):
            raise ValueError(f"HCFlow scale must be 4 or 8, got {self.scale}")
        if len(self.after_split) != self.L or not all(0 <= a <= self.K for a in self.after_split):
            raise ValueError(f"after_split {list(self.after_split)} must give 0..K={self.K} steps for each of {self.L} levels")
        if len(self.rrdb_nb) != 2:
            raise ValueError(f"rrdb_nb must hold two block counts, got {list(self.rrdb_nb)}")
        return self


RELEASED = {
    "hcflow-df2k-4x": HCFlowConfig(scale=4, K=26, after_split=(13, 13), rrdb_nb=(7, 7)),
    "hcflow-celeba-8x": HCFlowConfig(scale=8, K=26, after_split=(13, 13, 13), rrdb_nb=(5, 5)),
}


class FCN(nn.Module):
    """The coupling network: 3x3 conv + ActNorm, ReLU, 1x1 conv + ActNorm, ReLU, zero conv."""

    def __init__(self, cin: int, cout: int, hidden: int):
        super().__init__()
        self.conv1 = ConvActNorm(cin, hidden, 3)
        self.conv2 = ConvActNorm(hidden, hidden, 1)
        self.conv3 = Conv2dZeros(hidden, cout)

    def forward(self, x):
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))


class AtanAffineCoupling(CachingLayer):
    """Affine coupling of the second half of the channels from the first (and the condition,
    concatenated after it): `(z2 + shift) * exp(0.318 * atan(2 s))`, shift and s interleaved."""

    def __init__(self, channels: int, cond_channels: int, hidden: int):
        super().__init__()
        self.half = channels // 2
        self.f = FCN(self.half + cond_channels, 2 * (channels - self.half), hidden)

    def _shift_logscale(self, z1, cond):
        h = self.f(z1 if cond is None else torch.cat([z1, cond], 1))
        return h[:, 0::2], ATAN_GAIN * torch.atan(ATAN_SLOPE * h[:, 1::2])

    def forward(self, z, cond=None):
        z1, z2 = z[:, : self.half], z[:, self.half :]
        shift, logscale = self._shift_logscale(z1, cond)
        return torch.cat([z1, (z2 + shift) * torch.exp(logscale)], 1), logscale.flatten(1).sum(1)

    def inverse(self, z, cond=None):
        z1, z2 = z[:, : self.half], z[:, self.half :]
        shift, logscale = self._shift_logscale(z1, cond)
        return torch.cat([z1, z2 * torch.exp(-logscale) - shift], 1), -logscale.flatten(1).sum(1)


class HCFlowStep(InvertibleLayer):
    """ActNorm -> invertible 1x1 conv (`permute`) -> atan affine coupling."""

    def __init__(self, channels: int, cond_channels: int, hidden: int):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.permute = InvConv1x1(channels)
        self.affine = AtanAffineCoupling(channels, cond_channels, hidden)

    def forward(self, x, cond=None):
        x, ld1 = self.actnorm(x)
        x, ld2 = self.permute(x)
        x, ld3 = self.affine(x, cond)
        return x, ld1 + ld2 + ld3

    def inverse(self, y, cond=None):
        y, ld1 = self.affine.inverse(y, cond)
        y, ld2 = self.permute.inverse(y)
        y, ld3 = self.actnorm.inverse(y)
        return y, ld1 + ld2 + ld3


class SplitOff(nn.Module):
    """A level's split (no weights: its key index is kept so the layer numbers match)."""


class ConditionalFlow(nn.Module):
    """The model of one level's split-off part: RRDB features of the condition `u`, flow steps
    conditioned on them, and a Gaussian (mean, log-std) predicted from them."""

    def __init__(self, channels: int, u_channels: int, steps: int, cfg: HCFlowConfig):
        super().__init__()
        nf = cfg.nf
        self.conv_first = nn.Conv2d(u_channels, nf, 3, padding=1)
        self.RRDB_trunk0 = nn.Sequential(*[RRDB(nf, cfg.gc) for _ in range(cfg.rrdb_nb[0])])
        self.RRDB_trunk1 = nn.Sequential(*[RRDB(nf, cfg.gc) for _ in range(cfg.rrdb_nb[1])])
        self.trunk_conv1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.additional_flow_steps = nn.ModuleList(
            HCFlowStep(channels, 2 * nf, cfg.split_hidden_channels) for _ in range(steps))
        self.f = Conv2dZeros(2 * nf, 2 * channels)

    def features(self, u: torch.Tensor) -> torch.Tensor:
        """2 nf channels: the first trunk's output, and the second's (+ conv) with a skip."""
        first = self.conv_first(u)
        f1 = self.RRDB_trunk0(first)
        f2 = self.trunk_conv1(self.RRDB_trunk1(f1)) + first
        return torch.cat([f1, f2], 1)

    def _gaussian(self, feat):
        h = self.f(feat)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, a: torch.Tensor, feat: torch.Tensor):
        """Split-off part -> (eps, log-det of the steps + log N(steps' output; mean, exp(logs)))."""
        z, logdet = chain(self.additional_flow_steps, a, feat, a.new_zeros(a.shape[0]))
        mean, logs = self._gaussian(feat)
        return (z - mean) * torch.exp(-logs), logdet + gaussian_log_p(z, mean, logs)

    def inverse(self, eps: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        mean, logs = self._gaussian(feat)
        z = mean + torch.exp(logs) * eps
        return chain_inverse(self.additional_flow_steps, z, feat, z.new_zeros(z.shape[0]))[0]


class HCFlowNet(nn.Module):
    """The flow itself (`flow.*` in the released state dicts): `layers` = per level a squeeze,
    the plain steps and the split; `level{l}_condFlow` = the conditional flow of level l."""

    def __init__(self, cfg: HCFlowConfig):
        super().__init__()
        layers, self.spans, c = [], [], 3
        self.keep, self.split_channels = [], []
        for level in range(cfg.L):
            c *= 4
            start = len(layers)
            layers += [Squeeze()] + [HCFlowStep(c, 0, cfg.hidden_channels) for _ in range(cfg.K - cfg.after_split[level])]
            self.spans.append((start, len(layers)))
            layers.append(SplitOff())
            keep = c // 2 if level < cfg.L - 1 else 3
            self.keep.append(keep)
            self.split_channels.append(c - keep)
            c = keep
        self.layers = nn.ModuleList(layers)
        nf2 = 2 * cfg.nf
        for level in range(cfg.L):
            coarser = cfg.L - 1 - level  # feature maps of the coarser levels in this level's condition
            setattr(self, f"level{level}_condFlow",
                    ConditionalFlow(self.split_channels[level], self.keep[level] + nf2 * coarser,
                                    cfg.after_split[level], cfg))

    def cond_flow(self, level: int) -> ConditionalFlow:
        return getattr(self, f"level{level}_condFlow")

    def steps(self, level: int):
        a, b = self.spans[level]
        return self.layers[a:b]


def _up(feat: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(feat, size=size, mode="nearest")


@dataclass
class HCFlowContext:
    lr: torch.Tensor  # B x 3 x h x w, the top of the reverse pass
    out_size: tuple[int, int]
    top_features: torch.Tensor  # the coarsest conditional flow's features of the LR


class HCFlow(Flow):
    kind = "hcflow"

    def __init__(self, config: HCFlowConfig | None = None):
        super().__init__()
        self.config = cfg = (config or HCFlowConfig()).validate()
        self.flow = HCFlowNet(cfg)

    @property
    def fixed_scale(self) -> int:
        return self.config.scale

    @property
    def latent_channels(self) -> tuple[int, ...]:
        return tuple(reversed(self.flow.split_channels))

    def nll(self, log_p: torch.Tensor, ctx: HCFlowContext) -> torch.Tensor:
        """Bits per HR pixel (HCFlow's training NLL, as SRFlow's)."""
        return -log_p / (math.log(2.0) * ctx.out_size[0] * ctx.out_size[1])

    def default_tau(self, scale: float) -> float:
        return 0.9

    # ---- conditioning ------------------------------------------------------------------
    def condition(self, lr: torch.Tensor, out_size: tuple[int, int] | None = None) -> HCFlowContext:
        lr = self.checked_images(lr, "lr")
        s, (h, w) = self.config.scale, lr.shape[-2:]
        if out_size is not None and tuple(out_size) != (s * h, s * w):
            raise ValueError(f"HCFlow is a fixed-scale x{s} flow: out_size must be {(s * h, s * w)}, got {tuple(out_size)}")
        return HCFlowContext(lr, (s * h, s * w), self._features(self.config.L - 1, lr))

    @float32_transform
    def _features(self, level: int, u: torch.Tensor) -> torch.Tensor:
        # float32 like the transform: every level's features are computed inside the reverse
        # pass, and the coarsest ones condition every finer level
        return self.flow.cond_flow(level).features(u)

    def latent_shapes(self, ctx: HCFlowContext | None) -> list[tuple[int, ...]]:
        b, _, h, w = ctx.lr.shape if ctx is not None else (1, 3, 1, 1)
        return [(b, c, h * 2**i, w * 2**i) for i, c in enumerate(self.latent_channels)]

    # ---- the transform -----------------------------------------------------------------
    @float32_transform
    def forward_pass(self, hr: torch.Tensor):
        """HR -> (latent coarsest first, fake LR, log-det with the split parts' densities but
        without the Dirac LR term)."""
        net, L = self.flow, self.config.L
        z, logdet, kept, parts = hr, hr.new_zeros(hr.shape[0]), [], []
        for level in range(L):
            z, logdet = chain(net.steps(level), z, None, logdet)
            keep = net.keep[level]
            z, a = z[:, :keep], z[:, keep:]
            kept.append(z)
            parts.append(a)
        # top-down: a level's condition is its kept map, then the features of the coarser
        # levels, the next-coarser first (nearest-upsampled to its size)
        latent, feats = [], []
        for level in reversed(range(L)):
            u = torch.cat([kept[level]] + [_up(f, kept[level].shape[-2:]) for f in reversed(feats)], 1)
            cf = net.cond_flow(level)
            feat = cf.features(u)
            eps, ld = cf(parts[level], feat)
            latent.append(eps)
            feats.append(feat)
            logdet = logdet + ld
        return tuple(latent), z, logdet

    @float32_transform
    def _inverse(self, latent: Latent, lr: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """The reverse pass from the LR (whose features `top` are the context's)."""
        net, L = self.flow, self.config.L
        z, feats = lr, []
        for i, level in enumerate(reversed(range(L))):
            cf = net.cond_flow(level)
            feat = top if i == 0 else cf.features(torch.cat([z] + [_up(f, z.shape[-2:]) for f in reversed(feats)], 1))
            feats.append(feat)
            z = torch.cat([z, cf.inverse(latent[i], feat)], 1)
            z = chain_inverse(net.steps(level), z, None, z.new_zeros(z.shape[0]))[0]
        return z

    # ---- the flow interface -----------------------------------------------------------
    def encode(self, hr: torch.Tensor, ctx: HCFlowContext):
        """HR in [0, 1] -> (eps coarsest first, log p(hr | lr) in nats: the log-det with the
        split parts' densities + the Dirac LR term). No dequantisation noise."""
        hr = self.checked_images(hr, "hr", ctx.out_size, ctx.lr.shape[0])
        latent, fake_lr, logdet = self.forward_pass(hr)
        return latent, logdet + dirac_log_p(ctx.lr.float(), fake_lr)

    def decode(self, latent: Latent, ctx: HCFlowContext) -> torch.Tensor:
        latent = self.checked_latent(latent, ctx)
        return self._inverse(latent, ctx.lr, ctx.top_features)

    def initial_prior(self, lr: torch.Tensor, ctx: HCFlowContext, kind: str = "paper") -> Latent:
        """The split latents of the bicubic-upsampled LR, each standardised per position over
        its channels (unbiased std + 1e-8), as SRFlow-LP's initial prior."""
        if kind != "paper":
            raise ValueError(f"HCFlow has one initial prior, not {kind!r}")
        up = F.interpolate(ctx.lr, scale_factor=self.config.scale, mode="bicubic", align_corners=False)
        latent, _, _ = self.forward_pass(up)
        return tuple((z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-8) for z in latent)


def dirac_log_p(lr: torch.Tensor, fake_lr: torch.Tensor) -> torch.Tensor:
    """Upstream's "Dirac" LR term: log N(lr; fake_lr, exp(-6)^2) summed per image."""
    return gaussian_log_p(lr, fake_lr, torch.full_like(fake_lr, DIRAC_LOGS))


def config_from_state_dict(sd: dict) -> HCFlowConfig:
    """Levels, K, steps after the split, widths, RRDB blocks, nf and gc from key names and shapes."""
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"flow\.level(\d+)_condFlow\.", k))})
    L = len(levels)
    if levels != list(range(L)) or L not in (2, 3):
        raise ValueError(f"expected conditional flows for levels 0..1 (x4) or 0..2 (x8), found {levels}")
    after = tuple(len({int(m.group(1)) for k in sd
                       if (m := re.match(rf"flow\.level{lv}_condFlow\.additional_flow_steps\.(\d+)\.", k))})
                  for lv in range(L))
    plain = {int(m.group(1)) for k in sd if (m := re.match(r"flow\.layers\.(\d+)\.actnorm\.bias", k))}
    per_level = (len(plain) + sum(after)) // L
    if len(plain) + sum(after) != per_level * L:
        raise ValueError(f"{len(plain)} plain steps and {list(after)} conditional ones do not split into {L} equal levels")
    nb = tuple(len({int(m.group(1)) for k in sd if (m := re.match(rf"flow\.level0_condFlow\.RRDB_trunk{t}\.(\d+)\.", k))})
               for t in (0, 1))
    cf = "flow.level0_condFlow."
    hidden = sd[f"flow.layers.{min(plain)}.affine.f.conv1.weight"].shape[0]
    split_hidden = next((sd[f"flow.level{lv}_condFlow.additional_flow_steps.0.affine.f.conv1.weight"].shape[0]
                         for lv in range(L) if after[lv]), hidden)
    cfg = HCFlowConfig(scale=2**L, K=per_level, after_split=after, hidden_channels=hidden,
                       split_hidden_channels=split_hidden, rrdb_nb=nb, nf=sd[f"{cf}conv_first.weight"].shape[0],
                       gc=sd[f"{cf}RRDB_trunk0.0.RDB1.conv1.weight"].shape[0] if nb[0] else HCFlowConfig.gc)
    return cfg.validate()
