"""LINF-LP latent module: two dense-block encoders (initial prior, LR image) and a latent
generator (UNet by default; EDSR-baseline or Swin-T as in the paper's ablation)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..flows.linf import INITIAL_PRIORS
from ..model_config import ModelConfig
from ..nets.dense import DenseBlock5
from ..nets.edsr import ResBlock
from ..nets.swin import SwinStage
from ..nets.unet import OutConv, unet_forward, unet_layers
from ..nets.scale_head import LR_CHANNELS, ScaleHead, check_parts, lr_map, split_prediction
from ..nets.scale_specialists import check_specialists, specialist_weights
from ..nets.residual_correlation import ResidualCorrelation, ScaleCorrelations
from ..nets.scale_stats import ScaleAffine, ScaleStats, batch_norms

GENERATORS = ("unet", "edsr-baseline-latent", "swin_latent")
INPUTS = ("both", "prior", "lr")
#: what the LR branch's stride-3 conv reads: "lr", the LR at its own size (upstream; at x4 its
#: features are at a third of the LR's resolution, resized up to the latent map), or
#: "upsampled" (ours), the LR resized bicubically to three times the latent map's size, so
#: the conv reads each latent position's own 3x3 patch of the upsampled image
LR_INPUTS = ("lr", "upsampled")


@dataclass
class LINFPriorConfig(ModelConfig):
    generator: str = "unet"
    in_chans: int = 27  # latent channels: 3 x 3 x 3 for the 3x3 patch flows
    inputs: str = "both"  # the paper's Table 5 ablation: both, initial prior only, LR only
    dim: int = 64  # unet / edsr-baseline-latent width
    depth: int = 3  # unet
    n_resblocks: int = 16  # edsr-baseline-latent
    res_scale: float = 1.0
    embed_dim: int = 96  # swin_latent: width per input branch (the blocks see twice this)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    #: the flow's initial prior (flows.linf.INITIAL_PRIORS): "paper", or "antialiased", our
    #: every-scale extension (the paper's residual is zero at odd integer scales)
    initial_prior: str = "paper"
    #: the LR branch's input (LR_INPUTS); "lr" in every released module
    lr_input: str = "lr"
    #: ours, off in every released module: also predict a scale sigma per latent element
    #: (nets/scale_head.py); UNet generator only
    scale_head: bool = False
    #: ours, off in every released module: a second UNet of the same width and depth on the
    #: first one's features, whose 1x1 output adds to mu; that conv starts at zero, so a
    #: trained module grows it (train/run.py, `prior: {checkpoint, config: {refine: true}}`)
    #: with its output unchanged. UNet generator only
    refine: bool = False
    #: ours, off in every released module: BatchNorm statistics kept at these scales and
    #: interpolated at the image's (nets/scale_stats.py) instead of one set for every scale.
    #: UNet generator only
    scale_stats: tuple[float, ...] = ()
    #: ours, off in every released module: with scale_stats, a learned gain and shift per
    #: BatchNorm channel at those scales (nets/scale_stats.ScaleAffine), starting at the identity
    scale_affine: bool = False
    #: ours, off in every released module: copies of the whole module, each serving the images
    #: near one of these scales, blended with the module by scale (nets/scale_specialists.py);
    #: they need scale_stats (the scale the module reads). A module grows them as copies of
    #: itself (output unchanged), and a recipe trains one on crops of its scale
    specialists: tuple[float, ...] = ()
    #: the scale ratio either side of a specialist's anchor at which its weight reaches 0
    specialist_reach: float = 1.5
    #: ours, off in every released module: > 0 models the correlation of the residual around
    #: mu over this many neighbouring positions (nets/residual_correlation.py), for the
    #: samples around the prior and their density (a one-item tuple (0,): over channels only);
    #: fitted by `stage: correlate`
    residual_reach: int | tuple[int, ...] = 0
    #: ours, with residual_reach: one correlation fitted at each of these scales, interpolated at
    #: the image's (nets/residual_correlation.ScaleCorrelations); () one fit for every scale
    residual_scales: tuple[float, ...] = ()

    @property
    def width(self) -> int:
        """Feature width the generator sees, whatever the inputs."""
        return 2 * self.embed_dim if self.generator == "swin_latent" else self.dim



class LINFLatentModule(nn.Module):
    kind = "linf-lp"

    def __init__(self, config: LINFPriorConfig | None = None):
        super().__init__()
        self.config = cfg = config or LINFPriorConfig()
        if cfg.generator not in GENERATORS or cfg.inputs not in INPUTS or cfg.initial_prior not in INITIAL_PRIORS \
                or cfg.lr_input not in LR_INPUTS:
            raise ValueError(f"generator must be one of {GENERATORS}, inputs one of {INPUTS}, "
                             f"initial_prior one of {INITIAL_PRIORS} and lr_input one of {LR_INPUTS}")
        if (cfg.scale_head or cfg.refine or cfg.scale_stats) and cfg.generator != "unet":
            raise ValueError(f"scale_head, refine and scale_stats need the unet generator, not {cfg.generator!r}")
        if cfg.scale_affine and not cfg.scale_stats:
            raise ValueError("scale_affine needs scale_stats (the scales its gains and shifts are kept at)")
        if cfg.specialists:
            if not cfg.scale_stats:
                raise ValueError("specialists need scale_stats (the module reads its scale through them)")
            check_specialists(cfg.specialists, cfg.specialist_reach)
            # a member is a plain module: no specialists, the reach it would have by default, and
            # no residual correlation (the module's own serves every member)
            own = type(cfg).from_dict({**cfg.to_dict(), "specialists": (), "residual_reach": 0, "residual_scales": (),
                                       "specialist_reach": LINFPriorConfig.specialist_reach})
            self.specialists = nn.ModuleList(LINFLatentModule(own) for _ in cfg.specialists)
        w, c = cfg.width, cfg.in_chans
        if cfg.residual_scales and not cfg.residual_reach:
            raise ValueError("residual_scales needs residual_reach (the correlation kept at those scales)")
        if cfg.residual_reach:
            self.residual = ScaleCorrelations(cfg.residual_scales, cfg.residual_reach, (c,)) if cfg.residual_scales \
                else ResidualCorrelation(cfg.residual_reach, (c,))
        branch = w // 2 if cfg.inputs == "both" else w
        if cfg.inputs in ("both", "prior"):
            self.input_proj = DenseBlock5(c, branch, branch, None)
        if cfg.inputs in ("both", "lr"):
            self.lr_proj = nn.Sequential(nn.Conv2d(3, c, 3, stride=3, padding=1), nn.LeakyReLU(0.2),
                                         DenseBlock5(c, branch, branch, None))
        if cfg.generator == "unet":
            self.inc, self.down_layers, self.up_layers = unet_layers(w, cfg.depth)
            self.outc = OutConv(w, c)
            if cfg.scale_head:
                self.scale_head = ScaleHead(w, c)
            if cfg.refine:
                self.refine_inc, self.refine_down_layers, self.refine_up_layers = unet_layers(w, cfg.depth)
                self.refine_outc = OutConv(w, c)
                nn.init.zeros_(self.refine_outc.conv.weight)
                nn.init.zeros_(self.refine_outc.conv.bias)
            if cfg.scale_stats:
                self.scale_stats = ScaleStats(cfg.scale_stats, [m.num_features for m in self._batch_norms()])
            if cfg.scale_affine:
                self.scale_affine = ScaleAffine(len(cfg.scale_stats), self.scale_stats.offsets[-1])
        elif cfg.generator == "edsr-baseline-latent":
            self.body = nn.Sequential(*[ResBlock(w, cfg.res_scale, nn.LeakyReLU(0.2)) for _ in range(cfg.n_resblocks)])
            self.last_conv = nn.Conv2d(w, c, 1)
        else:
            self.layers = nn.ModuleList([SwinStage(w, d, h, cfg.window_size, cfg.mlp_ratio)
                                         for d, h in zip(cfg.depths, cfg.num_heads)])
            self.norm = nn.LayerNorm(w)
            e = cfg.embed_dim
            self.head = nn.Sequential(nn.Conv2d(w, e, 1), nn.LeakyReLU(0.2), nn.Conv2d(e, e // 2, 1),
                                      nn.LeakyReLU(0.2), nn.Conv2d(e // 2, c, 1))

    @property
    def latent_channels(self) -> tuple[int, ...]:
        return (self.config.in_chans,)

    def _batch_norms(self) -> list[nn.Module]:
        unets = [self.inc, self.down_layers, self.up_layers]
        if self.config.refine:
            unets += [self.refine_inc, self.refine_down_layers, self.refine_up_layers]
        return batch_norms(*unets)

    # two stages, separately callable so large maps can be tiled (see tiling.py); `part` is
    # the index of the latent part (LINF latents have one)
    def lr_features(self, lr: torch.Tensor, size: tuple[int, int], part: int = 0) -> torch.Tensor | None:
        """LR branch on the whole LR image (in [0, 1]), resized to the latent map's size; with
        the scale head, the resized LR (its input) follows as the last channels, and with
        scale_stats the log of the scale (from the sizes: three HR pixels per latent position)
        as one more. With specialists, the features of each module that serves the scale, one
        after the other, then which serve: two channels, the specialist's number (k + 1, or 0
        for the module alone) and its weight, exact in any float type."""
        if not self.config.specialists:
            return self._features(lr, size)
        cfg = self.config
        serving = specialist_weights(_scale_of(lr, size), cfg.specialists, cfg.specialist_reach)
        k, w = serving[-1]
        code = lr.new_tensor([0.0 if k is None else k + 1.0, w]).view(1, 2, 1, 1).expand(lr.shape[0], 2, *size)
        return torch.cat([self._member(j)._features(lr, size) for j, _ in serving] + [code], 1)

    def _member(self, k: int | None) -> "LINFLatentModule":
        return self if k is None else self.specialists[k]

    def members(self) -> list["LINFLatentModule"]:
        """This module and its specialists (each one a module without specialists)."""
        return [self, *getattr(self, "specialists", ())]

    @property
    def parameters_vary_by_scale(self) -> bool:
        """Whether images of different scales reach different parameters (specialists): the
        trainer then freezes nothing up front and DDP expects unused parameters."""
        return bool(self.config.specialists)

    def _features(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor | None:
        own = [lr_map(lr, size)] if self.config.scale_head else []
        if self.config.scale_stats:
            own.append(lr.new_full((lr.shape[0], 1, *size), math.log(_scale_of(lr, size))))
        if not hasattr(self, "lr_proj"):
            return torch.cat(own, 1) if own else None
        if self.config.lr_input == "upsampled":
            lr = F.interpolate(lr, (3 * size[0], 3 * size[1]), mode="bicubic", align_corners=False)
        f = self.lr_proj((lr - 0.5) / 0.5)
        if tuple(f.shape[-2:]) != tuple(size):
            f = F.interpolate(f, size, mode="bilinear", align_corners=False)
        return torch.cat([f, *own], 1) if own else f

    def generate(self, z0: torch.Tensor, lr_feat: torch.Tensor | None, part: int = 0) -> torch.Tensor:
        """mu (B x C x H x W), or with the scale head [mu, log sigma] (B x 2C x H x W); with
        specialists, the serving modules' predictions blended by their weights."""
        if not self.config.specialists:
            return self._generate(z0, lr_feat)
        code, w = (float(v) for v in lr_feat[0, -2:, 0, 0].detach())
        k = int(code) - 1 if code else None
        if k is None or w == 1.0:  # one module serves
            return self._member(k)._generate(z0, lr_feat[:, :-2])
        own, theirs = lr_feat[:, :-2].chunk(2, 1)
        # a lerp, so a specialist equal to the module changes nothing
        return torch.lerp(self._generate(z0, own), self.specialists[k]._generate(z0, theirs), w)

    def own_prediction(self, z0: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """`generate` of this module alone, whatever its specialists (calibration measures
        each one's statistics at every scale, including those it only shares)."""
        return self._generate(z0, self._features(lr, tuple(z0.shape[-2:])))

    def _generate(self, z0: torch.Tensor, lr_feat: torch.Tensor | None) -> torch.Tensor:
        head_lr, norm = None, None
        if self.config.scale_stats:
            scale = math.exp(float(lr_feat[0, -1, 0, 0].detach()))
            lr_feat = lr_feat[:, :-1] if lr_feat.shape[1] > 1 else None
            norm = self.scale_stats.norm(self._batch_norms(), scale, self.training,
                                         getattr(self, "scale_affine", None))
        if self.config.scale_head:
            lr_feat, head_lr = lr_feat[:, :-LR_CHANNELS], lr_feat[:, -LR_CHANNELS:]
            lr_feat = lr_feat if lr_feat.shape[1] else None
        feats = [self.input_proj(z0)] if hasattr(self, "input_proj") else []
        x = torch.cat(feats + ([lr_feat] if lr_feat is not None else []), 1)
        g = self.config.generator
        if g == "unet":
            f = unet_forward(x, self.inc, self.down_layers, self.up_layers, norm)
            mu = self.outc(f)
            if self.config.refine:
                mu = mu + self.refine_outc(unet_forward(f, self.refine_inc, self.refine_down_layers,
                                                        self.refine_up_layers, norm))
            return torch.cat([mu, self.scale_head(f, head_lr)], 1) if self.config.scale_head else mu
        if g == "edsr-baseline-latent":
            return self.last_conv(self.body(x))
        x = x.permute(0, 2, 3, 1)
        for stage in self.layers:
            x = stage(x)
        return self.head(self.norm(x).permute(0, 3, 1, 2))

    def forward(self, latent: tuple[torch.Tensor, ...], lr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(initial prior,), LR in [0, 1] -> (learned latent,) of the same shape."""
        return self.distribution(latent, lr)[0]

    def distribution(self, latent: tuple[torch.Tensor, ...], lr: torch.Tensor):
        """((mu,), (log sigma,)) with the scale head, ((mu,), None) without."""
        check_parts(latent, self.latent_channels, "LINF latent module")
        (z0,) = latent
        return split_prediction([self.generate(z0, self.lr_features(lr, z0.shape[-2:]))], self.latent_channels)


def _scale_of(lr: torch.Tensor, size: tuple[int, int]) -> float:
    """The scale a latent map of `size` over `lr` stands for (three HR pixels per position)."""
    return 1.5 * (size[0] / lr.shape[-2] + size[1] / lr.shape[-1])


#: the released / paper configurations (key names and shapes in linf_lp_manifest.json)
RELEASED = {
    "linf-lp-unet": LINFPriorConfig(generator="unet", dim=64, depth=3),
    "linf-lp-edsr-baseline-latent": LINFPriorConfig(generator="edsr-baseline-latent", dim=64, n_resblocks=16),
    "linf-lp-swin-latent": LINFPriorConfig(generator="swin_latent", embed_dim=96),
}
