"""SRFlow (Lugmayr et al., ECCV 2020): a Glow-style multi-level flow conditioned on RRDB
features, fixed scale (4x or 8x). Images are used in [0, 1] as they are."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model_config import ModelConfig
from ..nets.rrdb import RRDBNet
from ..nets.upsampled_conv import UpsampledConcat
from ..precision import compute_dtype, float32_transform
from .base import Flow, Latent
from .layers import FlowStep, MultiScaleFlow, Split2d, Squeeze, gaussian_log_p

#: the released models' RRDB taps (not recoverable from a state dict: only their number is)
RELEASED_TAPS = {4: (1, 8, 15, 22), 8: (1, 3, 5, 7)}


@dataclass
class SRFlowConfig(ModelConfig):
    scale: int = 4  # 4 or 8
    nf: int = 64
    nb: int = 23
    gc: int = 32
    K: int = 16  # coupling steps per level
    taps: tuple[int, ...] = RELEASED_TAPS[4]  # RRDB blocks whose outputs condition the flow
    hidden_channels: int = 64
    n_plain_steps: int = 2  # steps without coupling after each squeeze ("additionalFlowNoAffine")

    @property
    def L(self) -> int:  # levels: one per x2, plus one at LR/2 (the `fea_up0` level)
        return int(math.log2(self.scale)) + 1

    @property
    def cond_channels(self) -> int:
        return self.nf * (1 + len(self.taps))

    @classmethod
    def from_dict(cls, d: dict) -> "SRFlowConfig":
        return super().from_dict({"taps": RELEASED_TAPS[d.get("scale", 4)], **d})

    def validate(self) -> "SRFlowConfig":
        if self.scale not in (4, 8):
            raise ValueError(f"SRFlow scale must be 4 or 8, got {self.scale}")
        bad = [t for t in self.taps if not 0 <= t < self.nb]
        if bad:
            raise ValueError(f"RRDB taps {list(self.taps)} do not fit nb={self.nb} blocks")
        return self


RELEASED = {
    "srflow-df2k-4x": SRFlowConfig(scale=4, taps=RELEASED_TAPS[4]),
    "srflow-df2k-8x": SRFlowConfig(scale=8, taps=RELEASED_TAPS[8]),
}


@dataclass
class SRFlowContext:
    lr: torch.Tensor  # LR, reflect-padded bottom/right to even size
    out_size: tuple[int, int]  # HR size before padding
    conds: dict[int, torch.Tensor | UpsampledConcat]  # level -> 320-channel conditioning map


class FlowUpsamplerNet(MultiScaleFlow):
    """Levels of [squeeze, plain steps, K coupling steps], a split after all but the last two;
    level l is conditioned on the map at HR / 2^l."""

    def __init__(self, cfg: SRFlowConfig):
        levels, c = [], 3
        for level in range(1, cfg.L + 1):
            c *= 4
            steps = [Squeeze()] + [FlowStep(c, None) for _ in range(cfg.n_plain_steps)]
            steps += [FlowStep(c, cfg.cond_channels, cfg.hidden_channels) for _ in range(cfg.K)]
            split = Split2d(c) if level < cfg.L - 1 else None
            levels.append((steps, split))
            c -= c // 2 if split is not None else 0
        super().__init__(levels)
        self.f = nn.Sequential(nn.Conv2d(cfg.cond_channels, 96, 3, padding=1))  # in checkpoints, unused
        self.top_channels = c


class SRFlow(Flow):
    kind = "srflow"

    def __init__(self, config: SRFlowConfig | None = None):
        super().__init__()
        self.config = cfg = (config or SRFlowConfig()).validate()
        self.RRDB = RRDBNet(cfg.nf, cfg.nb, cfg.gc, n_upconv=int(math.log2(cfg.scale)))
        self.flowUpsamplerNet = FlowUpsamplerNet(cfg)

    @property
    def fixed_scale(self) -> int:
        return self.config.scale

    @property
    def latent_channels(self) -> tuple[int, ...]:
        return tuple(c for _, c, _, _ in self.latent_shapes(None))

    def nll(self, log_p: torch.Tensor, ctx: SRFlowContext) -> torch.Tensor:
        """Bits per HR pixel (SRFlow's training loss)."""
        return nll_bits_per_pixel(log_p, ctx.out_size)

    def default_tau(self, scale: float) -> float:
        return 0.9  # SRFlow's default heat

    def density_context(self, lr: torch.Tensor, out_size: tuple[int, int]):
        """An odd LR side is reflect-padded before the flow runs, so the exact density is that
        of the LR cropped to even sides and the HR region it maps to."""
        s, (h, w) = self.config.scale, lr.shape[-2:]
        if tuple(out_size) != (s * h, s * w):
            raise ValueError(f"SRFlow is a fixed-scale x{s} flow: the HR must be {(s * h, s * w)}, got {tuple(out_size)}")
        h2, w2 = h - h % 2, w - w % 2
        if h2 == 0 or w2 == 0:
            raise ValueError(f"a {h}x{w} LR has no even-sided region: SRFlow's density needs at least 2x2")
        lr = lr[..., :h2, :w2]
        return lr, self.condition(lr, (s * h2, s * w2)), (s * h2, s * w2)

    # ---- conditioning ------------------------------------------------------------------
    def condition(self, lr: torch.Tensor, out_size: tuple[int, int] | None = None) -> SRFlowContext:
        lr = self.checked_images(lr, "lr")
        s = self.config.scale
        h, w = lr.shape[-2:]
        if out_size is not None and tuple(out_size) != (s * h, s * w):
            raise ValueError(f"SRFlow is a fixed-scale x{s} flow: out_size must be {(s * h, s * w)}, got {tuple(out_size)}")
        lr = _pad_even(lr)
        rrdb = self.RRDB
        _, t, tapped = rrdb.trunk(lr, self.config.taps)
        stack = torch.cat(tapped, 1)
        last_lr = t + rrdb.trunk_conv(t)
        feats = {0: F.interpolate(last_lr, scale_factor=0.5, mode="bilinear", align_corners=False,
                                  recompute_scale_factor=True), 1: last_lr}
        x = last_lr
        for i in range(1, rrdb.n_upconv):  # fea_up2 (, fea_up4): the flow needs up to HR/2
            x = F.leaky_relu(getattr(rrdb, f"upconv{i}")(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
            feats[2**i] = x
        conds = {}
        for level in range(1, self.config.L + 1):  # level l runs at HR / 2^l; key 0 is LR / 2
            f = feats[s // 2**level]
            # in the autocast dtype (float32 without autocast): the coupling layers'
            # condition-only convolutions run in it. The coarsest level stays float32: decoding
            # starts there, so its errors pass through every finer level (it is 1/21 of the
            # convolutions' work; in bf16 it alone moved the random-weight output by 1.7/255)
            dtype = compute_dtype(f) if level < self.config.L else torch.float32
            r = f.shape[-1] // stack.shape[-1]
            if r >= 2 and tuple(f.shape[-2:]) == (r * stack.shape[-2], r * stack.shape[-1]):
                # finer than the LR: the tapped features stay at LR size (see UpsampledConcat)
                conds[level] = UpsampledConcat(f.to(dtype), stack.to(dtype), r)
            else:
                conds[level] = torch.cat([f, F.interpolate(stack, size=f.shape[-2:], mode="nearest")], 1).to(dtype)
        return SRFlowContext(lr, (s * h, s * w), conds)

    # ---- the flow interface -----------------------------------------------------------
    def latent_shapes(self, ctx: SRFlowContext | None) -> list[tuple[int, ...]]:
        b, _, h, w = ctx.lr.shape if ctx is not None else (1, 3, 2, 2)
        return self.flowUpsamplerNet.latent_shapes((b, 3, h * self.config.scale, w * self.config.scale))

    def _level_conds(self, ctx: SRFlowContext) -> list[torch.Tensor]:
        return [ctx.conds[level] for level in range(1, self.config.L + 1)]

    @float32_transform
    def _forward(self, hr: torch.Tensor, ctx: SRFlowContext):
        """(latent, log-det) of an HR of the context's size, unpadded or padded."""
        return self.flowUpsamplerNet(_pad_even(hr, self.config.scale), self._level_conds(ctx))

    def encode(self, hr: torch.Tensor, ctx: SRFlowContext):
        """HR in [0, 1] -> ((eps..., z), log p in nats per image). No dequantisation noise."""
        hr = self.checked_images(hr, "hr", ctx.out_size, ctx.lr.shape[0])
        latent, logdet = self._forward(hr, ctx)
        return latent, logdet + gaussian_log_p(latent[-1])

    @float32_transform
    def decode_with_logdet(self, latent: Latent, ctx: SRFlowContext):
        """Latent -> (padded HR, sum of the reverse pass's log-det contributions)."""
        return self.flowUpsamplerNet.inverse(latent, self._level_conds(ctx))

    def decode(self, latent: Latent, ctx: SRFlowContext) -> torch.Tensor:
        latent = self.checked_latent(latent, ctx)
        H, W = ctx.out_size
        return self.decode_with_logdet(latent, ctx)[0][:, :, :H, :W]

    def initial_prior(self, lr: torch.Tensor, ctx: SRFlowContext, kind: str = "paper") -> Latent:
        """SRFlow-LP's initial prior: the latents of bilinear_x4(LR), each standardised per
        pixel over channels (unbiased std + 1e-8)."""
        if kind != "paper":
            raise ValueError(f"SRFlow has only the paper's initial prior, not {kind!r}")
        up = F.interpolate(ctx.lr, scale_factor=self.config.scale, mode="bilinear", align_corners=False)
        latent, _ = self._forward(up, ctx)  # the padded size, and no log p
        return tuple((z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-8) for z in latent)


def nll_bits_per_pixel(log_p: torch.Tensor, hr_size: tuple[int, int]) -> torch.Tensor:
    """Upstream's SRFlow NLL (bits per HR pixel) from a log-likelihood in nats per image."""
    return -log_p / (math.log(2.0) * hr_size[0] * hr_size[1])


def _pad_even(x: torch.Tensor, unit: int = 1) -> torch.Tensor:
    """Pad bottom/right (reflect, or replicate for 1-pixel sides) to a multiple of 2*unit."""
    m = 2 * unit
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def config_from_state_dict(sd: dict, taps=None, scale=None) -> SRFlowConfig:
    """Everything but the tap indices follows from key names and shapes."""
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"RRDB\.RRDB_trunk\.(\d+)\.", k))}
    n_up = len({k for k in sd if re.match(r"RRDB\.upconv\d+\.weight", k)})
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(r"flowUpsamplerNet\.layers\.(\d+)\.", k))}
    first_split = min(i for i in layer_ids if f"flowUpsamplerNet.layers.{i}.conv.weight" in sd)
    coupling = [i for i in range(first_split) if f"flowUpsamplerNet.layers.{i}.affine.fAffine.0.weight" in sd]
    plain = [i for i in range(first_split) if f"flowUpsamplerNet.layers.{i}.invconv.weight" in sd and i not in coupling]
    nf = sd["RRDB.conv_first.weight"].shape[0]
    ffeat = sd[f"flowUpsamplerNet.layers.{coupling[0]}.affine.fFeatures.0.weight"]
    n_taps = ffeat.shape[1] // nf - 1
    scale = scale or 2**n_up
    nb = len(blocks)
    if taps is None:
        taps = RELEASED_TAPS.get(scale)
        if taps is None or len(taps) != n_taps or max(taps) >= nb:
            raise ValueError(f"cannot infer the {n_taps} RRDB tap indices of an nb={nb} model; pass them explicitly")
    cfg = SRFlowConfig(scale=scale, nf=nf, nb=nb, gc=sd["RRDB.RRDB_trunk.0.RDB1.conv1.weight"].shape[0],
                       K=len(coupling), taps=tuple(taps), hidden_channels=ffeat.shape[0], n_plain_steps=len(plain))
    if len(taps) != n_taps:
        raise ValueError(f"{len(taps)} taps given but the checkpoint conditions on {n_taps}")
    return cfg.validate()
