"""The one inference path: an LR image in, SR image(s) out.

`SuperResolver` is a pipeline in the manner of diffusers': it holds the models, turns the
input (tensor, PIL image or numpy array) into an LR batch, conditions the flow once, asks a
*latent strategy* (the pipeline's "scheduler") for the latent, decodes it, and returns an
`SRResult` that says which images came out non-finite (the exploding inverse).

    resolver = SuperResolver(flow)                              # sampling at the flow's tau
    resolver(img, scale=4, strategy=TemperatureSampling(0.6, seed=1)).output
    SuperResolver(flow, prior)(img, scale=4).output             # the learned prior

Strategies: `TemperatureSampling(tau, seed=...)` draws z ~ N(0, tau^2) (the same seed gives
the same unit noise at every tau); `LearnedPrior(prior)` predicts the latent with a latent
module from the flow's initial prior. To decode several latents for one input, condition
once with `prepare` and call `generate` for each strategy.
"""
from __future__ import annotations

import abc
import logging
import math
import numbers
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .data.resize import imresize
from .errors import UsageError
from .flows.base import Flow, Latent, checked_size, sample_noise
from .images import rgb_array
from .nets.residual_correlation import INDEPENDENT_WEIGHT
from .precision import reduced, resolve_precision
from .priors.tiling import predict_distribution
from .runtime import progress_bars
from .tiles import AUTO_TILE, TILE_ABOVE_LR_PIXELS, TileGrid, flow_tile_unit, tile_grid, tiled_scale

log = logging.getLogger(__name__)

ImageLike = Union[torch.Tensor, Image.Image, np.ndarray]


#: SuperResolver's default limit on output pixels per image (64 MP, as the CLI's default
#: --max-megapixels); `max_output_pixels=None` lifts it
MAX_OUTPUT_PIXELS = 64_000_000


def output_size(lr_hw: tuple[int, int], scale: float | tuple[float, float]) -> tuple[int, int]:
    """HR size for an LR size and a (possibly anisotropic) scale: round(h * s)."""
    sh, sw = (scale, scale) if isinstance(scale, numbers.Real) else _pair(scale)
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in (sh, sw)):
        raise ValueError(f"scale must be a positive finite number or (sh, sw), got {scale!r}")
    H, W = round(lr_hw[0] * sh), round(lr_hw[1] * sw)
    if H < 1 or W < 1:
        raise ValueError(f"scale {scale} gives an empty output for a {lr_hw[0]}x{lr_hw[1]} input")
    return H, W


def _pair(scale) -> tuple:
    try:
        sh, sw = scale
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a positive finite number or (sh, sw), got {scale!r}") from None
    return sh, sw


def finite_mask(sr: torch.Tensor) -> torch.Tensor:
    """Per batch item: True where the decoded image has only finite values (no exploding
    inverse). Check this before clamping: clamping turns inf into valid-looking pixels."""
    return torch.isfinite(sr.flatten(1)).all(1)


def bicubic(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The baseline every method is compared with: MATLAB-style bicubic upsampling of an LR
    batch (B x 3 x h x w in [0, 1]) to `size`, clamped to [0, 1]."""
    return imresize(lr, out_size=size).clamp(0, 1)


# ---- inputs and outputs -----------------------------------------------------------------
def as_lr_batch(image: ImageLike) -> tuple[torch.Tensor, str]:
    """(B x 3 x h x w float in [0, 1], the input's kind: "tensor", "tensor3", "pil", "numpy-uint8"
    or "numpy-float"). Tensors: 3 x h x w or B x 3 x h x w, float in [0, 1] or uint8. PIL: any
    mode, converted to RGB. numpy: h x w x 3 (or h x w gray), uint8 / uint16 or float in [0, 1]."""
    if isinstance(image, Image.Image):
        arr = rgb_array(image, [])  # the file reader's conversion: I;16 / I are 0..65535, F is [0, 1]
        t = torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float()
        return (t / 255 if arr.dtype == np.uint8 else t), "pil"
    if isinstance(image, np.ndarray):
        if image.dtype not in (np.uint8, np.uint16) and image.dtype.kind != "f":
            raise TypeError(f"numpy image must be uint8, uint16 or float in [0, 1], got {image.dtype}")
        arr = image[:, :, None].repeat(3, 2) if image.ndim == 2 else image
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.size == 0:
            raise UsageError(f"numpy image must be H x W x 3 (or H x W), got shape {image.shape}")
        arr = arr[:, :, :3]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
        if arr.dtype.kind == "f":
            return _checked_range(t).float(), "numpy-float"
        return t.float() / (255.0 if arr.dtype == np.uint8 else 65535.0), "numpy-uint8"
    if isinstance(image, torch.Tensor):
        kind = "tensor3" if image.dim() == 3 else "tensor"
        t = image[None] if image.dim() == 3 else image
        if t.dim() != 4 or t.shape[1] != 3:
            raise UsageError(f"image tensor must be 3 x H x W or B x 3 x H x W, got {tuple(image.shape)}")
        if t.numel() == 0:
            raise UsageError(f"image tensor is empty: shape {tuple(image.shape)}")
        if t.dtype == torch.uint8:
            return t.float() / 255, kind
        if not t.is_floating_point():
            raise TypeError(f"image tensor must be float in [0, 1] or uint8, got {t.dtype}")
        return _checked_range(t).float(), kind  # float64 / float16 / bfloat16 cast to float32
    raise UsageError(f"unsupported image type {type(image).__name__} (expected a tensor, PIL image or numpy array)")


def _checked_range(t: torch.Tensor) -> torch.Tensor:
    """Float pixels (tensor or numpy) must be finite and in [0, 1] (a little overshoot, as
    resampling makes, is fine); 0..255 floats would decode to garbage."""
    lo, hi = torch.aminmax(t.detach())
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise UsageError("image holds NaN or inf")
    if lo < -0.5 or hi > 1.5:
        raise UsageError(f"image values span [{lo.item():.3g}, {hi.item():.3g}]; expected floats in [0, 1]"
                         + (" (divide 0..255 values by 255)" if hi > 2 else ""))
    return t


#: the largest temperature the package accepts (the flows' useful range ends near 1)
MAX_TAU = 10.0


def checked_tau(tau: float | None, name: str = "tau") -> float | None:
    """`tau` (or another temperature, `name`) as a float, or None (the flow's recommended
    temperature); anything but a finite number in [0, MAX_TAU] is a `UsageError` (a
    ValueError) naming it."""
    if tau is None:
        return None
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 <= tau <= MAX_TAU:
        raise UsageError(f"{name} must be a finite number in [0, {MAX_TAU:g}], got {tau!r}")
    return float(tau)


@dataclass
class SRResult:
    """What one decode gave. `images`: B x 3 x H x W raw (unclamped; inf/NaN where the flow's
    inverse exploded); `finite`: (B,) bool, True for images without a non-finite value."""

    images: torch.Tensor
    finite: torch.Tensor
    strategy: "LatentStrategy"
    input_kind: str = "tensor"

    @property
    def all_finite(self) -> bool:
        return bool(self.finite.all())

    def clamped(self) -> torch.Tensor:
        """Displayable pixels in [0, 1] (non-finite values become 0 / 1; see `finite`)."""
        return torch.nan_to_num(self.images, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)

    @property
    def output(self) -> Any:
        """The SR image in the input's kind: a tensor (same rank as the input) in [0, 1], a PIL
        image, or an H x W x 3 numpy array (uint8 for an integer input, float32 otherwise)."""
        img = self.clamped()
        if self.input_kind == "tensor":
            return img
        if self.input_kind == "tensor3":
            return img[0]
        u8 = (img[0] * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        if self.input_kind == "pil":
            return Image.fromarray(u8)
        if self.input_kind == "numpy-uint8":
            return u8
        return img[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)


# ---- latent strategies ("schedulers") ----------------------------------------------------
@dataclass
class LatentInputs:
    """What a strategy reads to choose the latent of a whole LR batch, also when the image is
    decoded in tiles: the LR, unit noise of the whole latent's shapes (`noise(tau, generator)`)
    and the flow's initial prior of the whole image (`start(kind)`). `memo` keeps what a
    strategy computes once for every draw from the same input (`LearnedPrior`: the module's
    prediction); a `Prepared` input lends its own, so it lasts as long as the input."""

    flow: Flow
    lr: torch.Tensor
    noise: Callable[[float, Any], Latent]
    start: Callable[[str], Latent]
    memo: dict = field(default_factory=dict)

    @classmethod
    def whole(cls, flow: Flow, lr: torch.Tensor, ctx, memo: dict | None = None) -> "LatentInputs":
        return cls(flow, lr, lambda tau, gen: flow.sample_latent(ctx, tau, gen),
                   lambda kind: flow.initial_prior(lr, ctx, kind), {} if memo is None else memo)


class LatentStrategy(abc.ABC):
    """Chooses the latent the flow decodes, given the LR batch and the flow's conditioning."""

    #: True when the same input always gives the same latent (a retry cannot help)
    deterministic: bool = False

    def check(self, flow: Flow) -> None:
        """Raise `UsageError` when this strategy cannot work with `flow`."""

    @abc.abstractmethod
    def choose(self, inputs: LatentInputs, scale: float) -> Latent:
        """The whole latent for this LR batch; `scale` is the larger of the two upscaling ratios."""

    def latent(self, flow: Flow, lr: torch.Tensor, ctx, scale: float) -> Latent:
        """`choose` for an LR batch the flow was conditioned on whole (`ctx`)."""
        return self.choose(LatentInputs.whole(flow, lr, ctx), scale)

    def log_density(self, flow: Flow, lr: torch.Tensor, ctx, scale: float, latent: Latent,
                    memo: dict | None = None) -> torch.Tensor:
        """log q(latent) in nats per batch item (float64) under the latent distribution this
        strategy samples from (`SuperResolver.bits_per_dim`). `memo`: a dict shared by the
        strategies scored on the same (lr, ctx), where they keep what they can share."""
        raise UsageError(f"{self!r} defines no latent density")


def gaussian_log_density(latent: Latent, mean: Latent | None = None, log_sigma: Latent | None = None,
                         factor: float = 1.0, correlation=None) -> torch.Tensor:
    """Sum over every latent element of log N(z; mean, (factor * exp(log_sigma))^2), per batch
    item, in float64 (mean None: 0; log_sigma None: 0). With `correlation` (a latent module's
    `ResidualCorrelation`), the standardised residual (z - mean) / (factor * sigma) is that
    correlated Gaussian's instead of independent unit normals."""
    return _density(*_standardised(latent, mean, log_sigma, factor), correlation)


def _standardised(latent: Latent, mean: Latent | None, log_sigma: Latent | None,
                  factor: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(the residuals (z - mean) / (factor * sigma) per latent part, the log-normaliser: the sum
    of -log(factor * sigma) - log(2 pi) / 2 over every element, per batch item), in float64."""
    total, ds = 0, []
    for i, z in enumerate(latent):
        z = z.double()
        d = z - mean[i].double() if mean is not None else z
        ls = (log_sigma[i].double() if log_sigma is not None else torch.zeros((), dtype=torch.float64, device=z.device))
        ls = ls + math.log(factor)
        ds.append(d * torch.exp(-ls))
        total = total - (ls + 0.5 * math.log(2 * math.pi)).expand_as(z).flatten(1).sum(1)
    return ds, total


def _density(ds: list[torch.Tensor], log_normaliser: torch.Tensor, correlation=None) -> torch.Tensor:
    """`gaussian_log_density` of standardised residuals `ds`: independent unit normals, or
    `correlation`'s Gaussian."""
    es, log_det = correlation.whiten(ds) if correlation is not None else (ds, 0)
    return log_normaliser + log_det - sum(0.5 * (e ** 2).flatten(1).sum(1) for e in es)


def _generators(generator, seed):
    """A strategy's noise source: the generator, one generator per seed of a list, or a fresh
    one seeded with `seed` (None: torch's global one)."""
    if generator is None and isinstance(seed, (list, tuple)):
        return [torch.Generator().manual_seed(s) for s in seed]
    if generator is None and seed is not None:
        return torch.Generator().manual_seed(seed)
    return generator


def _uniforms(generators, n: int) -> torch.Tensor:
    """n uniforms in [0, 1), one per batch item, from a strategy's noise source after its noise:
    one generator per item, one generator for all, or torch's global one."""
    if isinstance(generators, (list, tuple)):
        return torch.stack([torch.rand((), generator=g, device=g.device).cpu() for g in generators])
    if generators is not None:
        return torch.rand(n, generator=generators, device=generators.device).cpu()
    return torch.rand(n)


@dataclass
class TemperatureSampling(LatentStrategy):
    """z ~ N(0, tau^2). `tau=None`: the flow's recommended temperature at the scale. Noise
    from `generator` when given, else from a fresh generator seeded with `seed` (None: torch's
    global one). The same seed gives the same unit noise at every temperature. `seed` may
    also be a list, one seed per batch item: each item then gets the noise it would get
    alone with its seed, so batching same-size images does not change them."""

    tau: float | None = None
    seed: int | list[int] | None = None
    generator: torch.Generator | None = field(default=None, repr=False)

    def __post_init__(self):
        self.tau = checked_tau(self.tau)

    @property
    def deterministic(self) -> bool:
        return self.tau == 0

    def resolved_tau(self, flow: Flow, scale: float) -> float:
        return flow.default_tau(scale) if self.tau is None else self.tau

    def choose(self, inputs: LatentInputs, scale: float) -> Latent:
        return inputs.noise(self.resolved_tau(inputs.flow, scale), _generators(self.generator, self.seed))

    def log_density(self, flow: Flow, lr: torch.Tensor, ctx, scale: float, latent: Latent,
                    memo: dict | None = None) -> torch.Tensor:
        tau = self.resolved_tau(flow, scale)
        if not tau > 0:
            raise ValueError(f"tau={tau} is a point mass: it has no density (bits/dim needs tau > 0)")
        return gaussian_log_density(latent, factor=tau)


def batched(strategy: LatentStrategy, n: int) -> LatentStrategy:
    """The strategy for a batch of n images that each get what they would get alone (a
    seeded sampling gets the seed once per item)."""
    if isinstance(strategy, TemperatureSampling) and strategy.generator is None and isinstance(strategy.seed, int):
        return TemperatureSampling(strategy.tau, seed=[strategy.seed] * n)
    if isinstance(strategy, LearnedPrior) and strategy.generator is None and isinstance(strategy.seed, int):
        return strategy.with_noise(seed=[strategy.seed] * n)
    return strategy


def check_prior_fits(flow: Flow, prior) -> None:
    """Raise `UsageError` unless the latent module predicts latents of the flow's channels
    and sits on the flow's device."""
    if tuple(prior.latent_channels) != tuple(flow.latent_channels):
        raise UsageError(f"the latent module predicts latents of {list(prior.latent_channels)} channels but "
                         f"this {flow.kind} flow's latents have {list(flow.latent_channels)}: they do not belong "
                         "together")
    flow_dev, prior_dev = next(flow.parameters()).device, next(prior.parameters()).device
    if flow_dev != prior_dev:
        raise UsageError(f"the latent module is on {prior_dev} but the flow is on {flow_dev}: move both to one "
                         f"device (prior.to('{flow_dev}'))")


class LearnedPrior(LatentStrategy):
    """FlowSR-LP: a latent module predicts the latent from the flow's initial prior (the
    latent of the upsampled LR) and the LR image.

    `variation=t` (ours) samples around the prediction: z = mu + t * sigma * eps, with sigma
    the module's learned scale (a module with `scale_head`) or 1 (a fixed temperature around
    the prior); eps is drawn as `TemperatureSampling` draws it (`seed`: an int, one per batch
    item, or a generator). t = 0, the default, returns mu itself. The latent density (for
    `bits_per_dim`) is N(mu, (t * sigma)^2), or N(mu, sigma^2) at t = 0. A module with
    `residual_reach` correlates eps over channels and neighbouring positions first (its
    `residual` at the upscale's scale, nets/residual_correlation.py): all but about one draw
    in a million, each drawing that choice from its noise source after its noise; the density
    is that mixture's.

    The prior runs on the whole batch unless its latent maps hold more than `max_pixels`
    positions together (default 2^20, about 3 GB of UNet dim-64 activations; an HR image of
    about 9 MP with a 3x3 LINF); then on as many items at a time as fit, and a map larger
    than that alone in overlapping `tile`-sized tiles blended together."""

    def __init__(self, prior, max_pixels: int | None = 1 << 20, tile: int = 256, overlap: int = 32,
                 margin: int = 32, *, variation: float = 0.0, seed: int | list[int] | None = None,
                 generator: torch.Generator | None = None):
        self.prior = prior.eval()
        self.max_pixels, self.tile, self.overlap, self.margin = max_pixels, tile, overlap, margin
        self.variation, self.seed, self.generator = checked_tau(variation, "variation"), seed, generator

    @property
    def deterministic(self) -> bool:
        return self.variation == 0

    def with_noise(self, *, variation: float | None = None, seed=None, generator=None) -> "LearnedPrior":
        """The same prior and tiling with another variation / noise source."""
        return LearnedPrior(self.prior, self.max_pixels, self.tile, self.overlap, self.margin,
                            variation=self.variation if variation is None else variation, seed=seed, generator=generator)

    def check(self, flow: Flow) -> None:
        check_prior_fits(flow, self.prior)

    @property
    def start_kind(self) -> str:
        """The initial prior this module was trained on (`Flow.initial_prior`'s kind)."""
        return getattr(self.prior.config, "initial_prior", "paper")

    def distribution(self, flow: Flow, lr: torch.Tensor, ctx) -> tuple[Latent, Latent | None]:
        """(mu, log sigma or None) the latent module predicts for this LR batch."""
        return self.predict(flow.initial_prior(lr, ctx, self.start_kind), lr)

    def predict(self, start: Latent, lr: torch.Tensor) -> tuple[Latent, Latent | None]:
        """(mu, log sigma or None) from the flow's initial prior `start` of the LR batch `lr`."""
        # channels-last (NHWC) maps: oneDNN convolves them without reordering
        start, lr = (tuple(z.contiguous(memory_format=torch.channels_last) for z in start),
                     lr.contiguous(memory_format=torch.channels_last))
        return predict_distribution(self.prior, start, lr, self.max_pixels, self.tile, self.overlap, self.margin)

    def _shared(self, memo: dict, compute) -> tuple[Latent, Latent | None]:
        """`compute()`, the module's (mu, log sigma), once per `memo`: every variation and draw
        around the same prior and tiling shares it."""
        key = ("learned prior", self.prior, self.start_kind, self.max_pixels, self.tile, self.overlap, self.margin)
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    def choose(self, inputs: LatentInputs, scale: float) -> Latent:
        mu, log_sigma = self._shared(inputs.memo, lambda: self.predict(inputs.start(self.start_kind), inputs.lr))
        if self.variation == 0:
            return tuple(m.clone() for m in mu)  # the caller's own: the memo's copy stays intact
        if log_sigma is None:
            _note_fixed_variation()
        generators = _generators(self.generator, self.seed)
        eps = inputs.noise(self.variation, generators)  # t * unit noise
        correlation = _correlation(self.prior, scale)
        if correlation is not None:  # the whole latent's noise, so tiles decode the same image
            independent = (_uniforms(generators, len(mu[0])) < INDEPENDENT_WEIGHT).view(-1, 1, 1, 1)
            eps = [torch.where(independent.to(e.device), e, c) for e, c in zip(eps, correlation.color(eps))]
        scales = (torch.exp(ls) for ls in log_sigma) if log_sigma is not None else (1.0 for _ in mu)
        return tuple(m + s * e.to(m.dtype) for m, s, e in zip(mu, scales, eps))

    def log_density(self, flow: Flow, lr: torch.Tensor, ctx, scale: float, latent: Latent,
                    memo: dict | None = None) -> torch.Tensor:
        mu, log_sigma = self._shared({} if memo is None else memo, lambda: self.distribution(flow, lr, ctx))
        ds, log_normaliser = _standardised(latent, mu, log_sigma, self.variation or 1.0)  # once for both
        independent = _density(ds, log_normaliser)
        correlation = _correlation(self.prior, scale)
        if correlation is None:
            return independent
        return torch.logaddexp(_density(ds, log_normaliser, correlation) + math.log1p(-INDEPENDENT_WEIGHT),
                               independent + math.log(INDEPENDENT_WEIGHT))

    def __repr__(self) -> str:
        v = f", variation={self.variation:g}" if self.variation else ""
        return f"LearnedPrior({type(self.prior).__name__}{v})"


def _correlation(prior, scale: float):
    """The latent module's residual correlation for an image at `scale`, or None."""
    correlation = getattr(prior, "residual", None)
    return None if correlation is None else correlation.at(scale)


_fixed_variation_noted = False


def _note_fixed_variation() -> None:
    global _fixed_variation_noted
    if not _fixed_variation_noted:
        _fixed_variation_noted = True
        log.warning("this latent module has no scale head: variation t samples N(mu, t^2), a fixed "
                    "temperature around the prior")


# ---- the pipeline ------------------------------------------------------------------------
@dataclass
class Prepared:
    """An LR batch on the flow's device, its output size and the flow's conditioning (None
    when it runs in `tiles`: each tile is conditioned when it is decoded)."""

    lr: torch.Tensor
    size: tuple[int, int]
    ctx: Any
    input_kind: str
    tiles: TileGrid | None = None
    #: what latent strategies share between draws from this input (`LatentInputs.memo`); a
    #: prepared input assumes the latent module's weights do not change while it is in use
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def scale(self) -> float:
        return max(self.size[0] / self.lr.shape[-2], self.size[1] / self.lr.shape[-1])


def checked_tile(tile) -> str | int:
    """`tile` as "auto", "off" or a positive int (a `UsageError` naming tile otherwise)."""
    if tile in ("auto", "off") or (isinstance(tile, numbers.Integral) and not isinstance(tile, bool) and tile > 0):
        return tile if isinstance(tile, str) else int(tile)
    raise UsageError(f"tile must be 'auto', 'off' or a tile side in LR pixels (a positive integer), got {tile!r}")


#: LR pixels of context around each tile (`SuperResolver(tile_margin=)`). The bundled LINF's
#: encoder sees 12 LR pixels around a pixel, so its tiles are exact up to rounding; SRFlow's
#: RRDB and flow see the whole image in principle, and with 32 the bundled models' tiles stay
#: within 0.01/255 of the whole image on photos (16: 0.02/255; benchmarks/bench_tiles.py).
#: The latent module needs no margin: it runs on the whole initial prior.
TILE_MARGIN = 32


class SuperResolver:
    """`flow` + optional learned `prior`. Without a prior the default strategy samples the
    latent at the flow's recommended temperature; with one, the latent module's prediction
    replaces the sample (`LearnedPrior`, tiled above `prior_max_pixels` latent positions).

    `tile`: "auto" (the default) upscales LR images over `TILE_ABOVE_LR_PIXELS` (512 x 512)
    in tiles of `AUTO_TILE` (256) LR pixels and smaller ones whole; "off" always whole; N
    tiles of N LR pixels. Each tile is computed with `tile_margin` LR pixels of context. The
    latent is chosen for the whole image (noise drawn for the whole latent from the seed,
    the latent module run on the whole initial prior, which is assembled from the tiles) and
    decoded tile by tile, so tiles give the whole image's pixels (see `tiles.py`). Tiling
    needs one whole-pixel scale on both axes; "auto" runs other sizes whole.

    `precision` ("fp32", "bf16", "fp16" or "auto": bf16 where the hardware has bf16 matrix
    units) is what the encoder, the conditioning networks and the latent module compute in
    (autocast); the flow's invertible transform and its log-determinants stay float32."""

    def __init__(self, flow: Flow, prior=None, *, strategy: LatentStrategy | None = None,
                 prior_max_pixels: int | None = 1 << 20, prior_tile: int = 256, prior_overlap: int = 32,
                 prior_margin: int = 32, precision: str | torch.dtype = "fp32",
                 max_output_pixels: int | None = MAX_OUTPUT_PIXELS, tile: str | int = "auto",
                 tile_margin: int = TILE_MARGIN):
        self.tile = checked_tile(tile)
        if not (isinstance(tile_margin, numbers.Integral) and tile_margin >= 0):
            raise UsageError(f"tile_margin must be a whole number of LR pixels >= 0, got {tile_margin!r}")
        self.tile_margin = int(tile_margin)
        if max_output_pixels is not None and not (isinstance(max_output_pixels, numbers.Real) and max_output_pixels > 0):
            raise ValueError(f"max_output_pixels must be a positive number or None, got {max_output_pixels!r}")
        self.max_output_pixels = max_output_pixels
        self.flow = flow.eval()
        self.dtype = resolve_precision(precision, self.device)
        self.prior = prior.eval() if prior is not None else None
        if strategy is None:
            strategy = (LearnedPrior(prior, prior_max_pixels, prior_tile, prior_overlap, prior_margin)
                        if prior is not None else TemperatureSampling())
        strategy.check(self.flow)
        self.strategy = strategy

    @property
    def device(self) -> torch.device:
        return next(self.flow.parameters()).device

    def target_size(self, lr_hw: tuple[int, int], scale=None, size=None) -> tuple[int, int]:
        """The output size: `size` (H, W), or the LR size times `scale`; a fixed-scale flow
        (SRFlow) defaults to its own scale."""
        if size is not None and scale is not None:
            raise UsageError("give exactly one of size and scale")
        if size is None:
            scale = scale if scale is not None else getattr(self.flow, "fixed_scale", None)
            if scale is None:
                raise UsageError("give a scale or an output size")
            size = output_size(lr_hw, scale)
        h, w = checked_size(size)
        if self.max_output_pixels is not None and h * w > self.max_output_pixels:
            raise UsageError(f"output {h}x{w} is {h * w / 1e6:.1f} MP, over this SuperResolver's limit of "
                             f"{self.max_output_pixels / 1e6:g} MP (max_output_pixels=None lifts it)")
        return h, w

    @torch.no_grad()
    def prepare(self, image: ImageLike, *, scale=None, size=None, tile: str | int | None = None) -> Prepared:
        """Everything that does not depend on the latent: the LR batch, the tiles it runs in
        (`tile`: this call's, default the resolver's) and, run whole, the conditioning."""
        lr, kind = as_lr_batch(image)
        lr = lr.to(self.device)
        hw = self.target_size(tuple(lr.shape[-2:]), scale, size)
        grid = self.tiles(tuple(lr.shape[-2:]), hw, self.tile if tile is None else checked_tile(tile))
        if grid is not None:
            return Prepared(lr, hw, None, kind, grid)
        with reduced(self.dtype, self.device):
            ctx = self.flow.condition(lr, hw)
        return Prepared(lr, hw, ctx, kind)

    def tiles(self, lr_hw: tuple[int, int], size: tuple[int, int], tile: str | int) -> TileGrid | None:
        """The tiles an `lr_hw` -> `size` upscale runs in under `tile`, or None: whole (also an
        image that fits one tile). A size tiles cannot reproduce runs whole under "auto" and
        is a `UsageError` under a tile side."""
        if tile == "off" or (tile == "auto" and lr_hw[0] * lr_hw[1] <= TILE_ABOVE_LR_PIXELS):
            return None
        side = AUTO_TILE if tile == "auto" else tile
        scale = tiled_scale(lr_hw, size)
        try:
            if scale is None:
                raise UsageError(f"a {lr_hw[0]}x{lr_hw[1]} LR upscaled to {size[0]}x{size[1]} cannot be tiled: "
                                 "tiles need the same whole-pixel scale on both axes (tile='off' runs it whole)")
            unit = flow_tile_unit(self.flow, float(scale))
            if max(lr_hw) <= side:
                return None
            return tile_grid(lambda hw: self._latent_shapes(hw, scale), unit, lr_hw, scale, side, self.tile_margin)
        except UsageError:
            if tile == "auto":
                return None
            raise

    def retry_tile(self, lr_hw: tuple[int, int], size: tuple[int, int]) -> int | None:
        """The tile side to retry an upscale in after it ran out of memory whole: `AUTO_TILE`
        when tiles can reproduce the size and the image is larger than one tile, else None."""
        try:
            return AUTO_TILE if self.tiles(lr_hw, size, AUTO_TILE) is not None else None
        except UsageError:
            return None

    def _latent_shapes(self, lr_hw: tuple[int, int], scale: Fraction) -> list[tuple[int, ...]]:
        """The flow's latent shapes for one LR of size `lr_hw` (conditioned on a blank one)."""
        with reduced(self.dtype, self.device):
            ctx = self.flow.condition(torch.zeros(1, 3, *lr_hw, device=self.device),
                                      (int(lr_hw[0] * scale), int(lr_hw[1] * scale)))
        return self.flow.latent_shapes(ctx)

    def latent_inputs(self, prepared: Prepared) -> LatentInputs:
        """What strategies choose the latent of a prepared input from (see `LatentInputs`)."""
        if prepared.tiles is None:
            return LatentInputs.whole(self.flow, prepared.lr, prepared.ctx, prepared.memo)
        grid, lr = prepared.tiles, prepared.lr
        shapes = [(lr.shape[0], *s[1:]) for s in grid.shapes]

        def start(kind: str) -> Latent:
            out = [None] * len(shapes)
            for t, x, ctx in self._conditioned_tiles(prepared):
                for i, z in enumerate(self.flow.initial_prior(x, ctx, kind)):
                    out[i] = z.new_empty(shapes[i]) if out[i] is None else out[i]
                    (ki, kj), (wi, wj) = grid.kept(t, i)
                    out[i][..., wi, wj] = z[..., ki, kj]
            return tuple(out)

        return LatentInputs(self.flow, lr, lambda tau, gen: sample_noise(shapes, tau, gen, *self.flow.device_dtype()),
                            start, prepared.memo)

    def _conditioned_tiles(self, prepared: Prepared):
        """(tile, its LR region, the flow conditioned on it) for each tile in turn, with a
        progress bar on a terminal."""
        grid = prepared.tiles
        bar = tqdm(grid, desc="tiles", unit="tile", leave=False, disable=None if progress_bars() else True)
        for t in bar:
            x = prepared.lr[..., t.r0 : t.r1, t.c0 : t.c1]
            with reduced(self.dtype, self.device):
                ctx = self.flow.condition(x, grid.hr(t)[0])
            yield t, x, ctx

    def decode(self, prepared: Prepared, latent: Latent) -> torch.Tensor:
        """The SR batch of a whole latent: decoded whole, or tile by tile from the latent's
        windows (each tile conditioned anew)."""
        if prepared.tiles is None:
            return self.flow.decode(latent, prepared.ctx)  # decode casts the latent to the flow's float32
        grid, out = prepared.tiles, None
        for t, _, ctx in self._conditioned_tiles(prepared):
            sr = self.flow.decode(tuple(z[(..., *grid.region(t, i))] for i, z in enumerate(latent)), ctx)
            out = sr.new_empty(*sr.shape[:2], *prepared.size) if out is None else out
            _, kept, at = grid.hr(t)
            out[(..., *at)] = sr[(..., *kept)]
        return out

    @torch.no_grad()
    def generate(self, prepared: Prepared, strategy: LatentStrategy | None = None) -> SRResult:
        """Decode the latent `strategy` (default: the pipeline's) chooses for a prepared input."""
        strategy = strategy or self.strategy
        if strategy is not self.strategy:
            strategy.check(self.flow)
        with reduced(self.dtype, self.device):
            latent = strategy.choose(self.latent_inputs(prepared), prepared.scale)
        sr = self.decode(prepared, latent)
        return SRResult(sr, finite_mask(sr), strategy, prepared.input_kind)

    @torch.no_grad()
    def bits_per_dim(self, hr: torch.Tensor, lr: torch.Tensor, strategy: LatentStrategy | None = None) -> torch.Tensor:
        """Negative log2-likelihood of the 8-bit image `hr` per sub-pixel, given `lr`: (B,)
        float64, `(-log p(hr | lr) / D + ln 256) / ln 2` with D = 3 * H * W and p the density
        of `hr` in [0, 1] at the values given (no dequantisation noise). The latent density is
        the strategy's: N(0, tau^2) for `TemperatureSampling(tau)` (None: tau = 1),
        N(mu, (t * sigma)^2) for `LearnedPrior` (see there). `hr`: B x 3 x H x W, `lr`:
        B x 3 x h x w, both in [0, 1]. Where a flow models padding at the border (SRFlow's
        odd LR sides, LINF's overhanging 3x3 patches) the value is that of the largest
        top-left region it models exactly (`Flow.density_context`), and D counts that region."""
        return self.bits_per_dim_each(hr, lr, [strategy or TemperatureSampling(1.0)])[0]

    @torch.no_grad()
    def bits_per_dim_each(self, hr: torch.Tensor, lr: torch.Tensor,
                          strategies: Sequence[LatentStrategy]) -> list[torch.Tensor]:
        """`bits_per_dim` under each strategy, from one conditioning and one encoding of `hr`."""
        for strategy in strategies:
            strategy.check(self.flow)
        lr = self.flow.checked_images(lr.to(self.device), "lr")
        hr = self.flow.checked_images(hr.to(self.device), "hr", batch=lr.shape[0])
        size = tuple(hr.shape[-2:])
        with reduced(self.dtype, self.device):
            lr, ctx, (h, w) = self.flow.density_context(lr, size)
        hr = hr[..., :h, :w]
        latent, log_p = self.flow.encode(hr, ctx)
        # the image's scale, as its upscale's (`Prepared.scale`), not that of the cropped region
        dims, scale = 3 * h * w, max(size[0] / lr.shape[-2], size[1] / lr.shape[-1])
        log_p = log_p.double() - gaussian_log_density(latent) + dims * self.flow.internal_log_scale
        out, memo = [], {}  # memo: the latent module runs once for all its variations
        for strategy in strategies:
            with reduced(self.dtype, self.device):
                log_q = strategy.log_density(self.flow, lr, ctx, scale, latent, memo)
            out.append((-(log_p + log_q) / dims + math.log(256)) / math.log(2))
        return out

    def __call__(self, image: ImageLike, *, scale=None, size=None, strategy: LatentStrategy | None = None,
                 tile: str | int | None = None) -> SRResult:
        return self.generate(self.prepare(image, scale=scale, size=size, tile=tile), strategy)

    def upscale(self, lr: torch.Tensor, out_size: tuple[int, int] | None = None, *,
                scale: float | tuple[float, float] | None = None, tau: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """The older call, kept: `self(lr, size=out_size | scale=scale, strategy=...).images`.
        LR (B x 3 x h x w in [0, 1]) -> SR, raw (unclamped; may hold inf/NaN when the flow's
        inverse explodes: see `finite_mask`). Without a learned prior it samples at `tau`
        (None: the flow's recommended one) with noise from `generator`; with a prior the
        prior's latent is decoded, and giving `tau` is a `UsageError` (sample with
        `self(lr, ..., strategy=TemperatureSampling(tau))` instead)."""
        if (out_size is None) == (scale is None):
            raise ValueError("give exactly one of out_size and scale")
        if tau is not None and self.prior is not None:
            raise UsageError(f"tau={tau!r} with a learned prior: the prior's latent is not sampled at a temperature; "
                             "call upscale without tau, or sample with strategy=TemperatureSampling(tau)")
        strategy = self.strategy if self.prior is not None else TemperatureSampling(tau, generator=generator)
        return self(lr, scale=scale, size=out_size, strategy=strategy).images
