"""One app request, from an image file to SR outputs and their metrics, without Gradio.

Order of work: the scale is checked against the model and the output size against
`max_megapixels` from the image's header alone, before any pixel is decoded or any model
runs; then the image is read (or, in known-HR mode, downscaled with MATLAB bicubic), and the
model's pipeline upscales it by temperature sampling (N draws, seeds seed..seed+N-1) and with
the learned prior. Decoded images stay raw: a non-finite one is an exploding inverse and is
reported as such, never clamped into a plausible picture."""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import sizes
from ..data.resize import imresize
from ..errors import ExplodingInverse, ImageError, UsageError
from ..images import image_size, load_rgb_uint8, read_image, write_png
from ..metrics import diversity, grid_score, lr_psnr, psnr, ssim
from ..pipeline import TemperatureSampling, bicubic as bicubic_upscale, output_size
from ..temperature import temperature_map
from .models import LoadedModel

MIN_SCALE, MAX_SCALE = 1.0, 8.0
MAX_DRAWS = 16


@dataclass(frozen=True)
class Settings:
    scale: float = 4.0
    out_size: tuple[int, int] | None = None  # (H, W), LINF only; replaces the scale
    tau: float = 0.5
    seed: int = 0
    draws: int = 1
    known_hr: bool = False  # the image is the HR: downscale it first, then score against it
    variation: float = 0.0  # > 0: the prior column also gets `draws` samples around the prior


@dataclass
class Inputs:
    lr: torch.Tensor  # 1 x 3 x h x w in [0, 1]
    out_size: tuple[int, int]
    hr: torch.Tensor | None = None  # 1 x 3 x H x W, known-HR mode
    notes: list[str] = field(default_factory=list)

    @property
    def scale(self) -> tuple[float, float]:
        return (self.out_size[0] / self.lr.shape[-2], self.out_size[1] / self.lr.shape[-1])


def shown(img: torch.Tensor) -> torch.Tensor:
    """The pixels the page shows and the PNG holds (`images.to_uint8`) as floats: clamped to
    [0, 1] and rounded to 8 bits. Every figure is computed on these."""
    return img.float().clamp(0, 1).mul(255).round().div(255)


@dataclass
class Output:
    """One decoded image, raw (may hold inf/NaN), with the seed that drew it (None: prior)."""
    sr: torch.Tensor  # 3 x H x W
    seed: int | None
    seconds: float
    finite: bool  # the pipeline's check: no inf/NaN

    @property
    def shown(self) -> torch.Tensor:
        return shown(self.sr)


@dataclass
class Result:
    inputs: Inputs
    draws: list[Output]
    prior: Output | None
    model: str
    precision: str
    device: str
    seconds: float
    tau: float
    prior_draws: list[Output] = field(default_factory=list)  # samples around the prior
    variation: float = 0.0
    bits_per_dim: dict[str, float] = field(default_factory=dict)  # known-HR mode: method -> bits/dim of the HR

    @functools.cached_property
    def bicubic(self) -> torch.Tensor:
        """3 x H x W in [0, 1]: made when first shown or scored (outside the model's queue;
        the API never needs it)."""
        return bicubic_upscale(self.inputs.lr, self.inputs.out_size)[0]

    @property
    def finite_draws(self) -> list[Output]:
        return [d for d in self.draws if d.finite]

    @property
    def finite_prior_draws(self) -> list[Output]:
        return [d for d in self.prior_draws if d.finite]


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'512x768' (height x width) -> (512, 768), the command line's grammar (`sizes`); empty -> None."""
    if not text or not text.strip():
        return None
    return sizes.parse_size(text)


def _local_name(e: ImageError, path: str | Path) -> ImageError:
    """The same error naming the file, not the server's temporary copy of it."""
    return ImageError(str(e).replace(str(path), Path(path).name))


def check_settings(model: LoadedModel, s: Settings) -> None:
    fixed = model.fixed_scale
    if fixed is not None:
        if s.out_size is not None or not math.isclose(s.scale, fixed):
            raise UsageError(f"{model.choice.name} is fixed-scale: x{fixed} only")
    elif s.out_size is None and not MIN_SCALE <= s.scale <= MAX_SCALE:
        raise UsageError(f"scale {s.scale:g} is outside {MIN_SCALE:g}-{MAX_SCALE:g}")
    if not (0 <= s.tau <= 10 and 0 <= s.variation <= 10 and 1 <= s.draws <= MAX_DRAWS):
        raise UsageError(f"tau and variation must be in 0-10 and draws in 1-{MAX_DRAWS}")
    if s.known_hr and s.out_size is not None:
        raise UsageError("known-HR mode upscales back to the image's own size: give a scale, not an output size")


def plan_size(model: LoadedModel, hw: tuple[int, int], s: Settings) -> tuple[tuple[int, int], tuple[int, int]]:
    """(LR size, output size) for an image of size `hw`, from sizes alone."""
    if s.known_hr:
        crop = model.fixed_scale or (int(s.scale) if float(s.scale).is_integer() else 1)
        H, W = hw[0] - hw[0] % crop, hw[1] - hw[1] % crop
        lr = (round(H / s.scale), round(W / s.scale))
        if min(lr) < 1:
            raise ImageError(f"a {hw[0]}x{hw[1]} image is too small to downscale x{s.scale:g}")
        return lr, (H, W)
    return hw, s.out_size or output_size(hw, s.scale)


def check_megapixels(hw: tuple[int, int], out: tuple[int, int], limit: float) -> None:
    mp = max(sizes.megapixels(hw), sizes.megapixels(out))  # an upload counts too
    if mp > limit:
        raise ImageError(f"{hw[0]}x{hw[1]} -> {out[0]}x{out[1]} is {mp:.1f} MP, over this app's limit of "
                         f"{limit:g} MP: use a smaller image or scale")


@dataclass(frozen=True)
class Plan:
    """What a request will do, decided from the image's header alone."""
    path: Path
    in_size: tuple[int, int]
    lr_size: tuple[int, int]
    out_size: tuple[int, int]
    known_hr: bool
    max_pixels: int


def plan(path: str | Path, model: LoadedModel, s: Settings, max_megapixels: float) -> Plan:
    """Every check that sizes allow, before any pixel is decoded or any model runs."""
    check_settings(model, s)
    try:
        hw = image_size(path)
    except ImageError as e:
        raise _local_name(e, path) from None
    lr_size, out = plan_size(model, hw, s)
    check_megapixels(hw, out, max_megapixels)
    return Plan(Path(path), hw, lr_size, out, s.known_hr, int(max_megapixels * 1e6))


def read_inputs(p: Plan) -> Inputs:
    """Decode the image; in known-HR mode it is the HR, cropped to a multiple of the scale
    and downscaled with MATLAB bicubic (uint8 in and out, as LR files are made)."""
    try:
        if not p.known_hr:
            img, notes = read_image(p.path, max_pixels=p.max_pixels)
            return Inputs(img[None], p.out_size, None, [f"{p.path.name}: {n}" for n in notes])
        hr_u8 = load_rgb_uint8(p.path, max_pixels=p.max_pixels)[:, :p.out_size[0], :p.out_size[1]]
    except ImageError as e:
        raise _local_name(e, p.path) from None
    notes = [f"HR cropped to {p.out_size[0]}x{p.out_size[1]} (a multiple of the scale)"] if p.out_size != p.in_size else []
    lr = imresize(hr_u8, out_size=p.lr_size).float() / 255
    return Inputs(lr[None], p.out_size, (hr_u8.float() / 255)[None], notes)


def generate(model: LoadedModel, prepared, strategy, seed: int | None) -> Output:
    t0 = time.perf_counter()
    r = model.resolver.generate(prepared, strategy)
    return Output(r.images[0].float().cpu(), seed, time.perf_counter() - t0, bool(r.finite[0]))


def compute(model: LoadedModel, p: Plan, s: Settings, sampling: bool, prior: bool, report) -> Result:
    """Decode the image, condition the flow once, then s.draws draws at s.tau and/or the
    learned prior (and, with s.variation > 0, s.draws samples around it); in known-HR mode
    also the HR's bits/dim under each method (no queueing: callers go through `model.call`)."""
    prior = prior and model.prior is not None
    around = s.draws if prior and s.variation > 0 else 0
    steps = (s.draws if sampling else 0) + int(prior) + around + 1
    t0 = time.perf_counter()
    report(0.0, "conditioning the flow")
    inputs = read_inputs(p)
    prepared = model.resolver.prepare(inputs.lr, size=inputs.out_size)
    draws = []
    for k in range(s.draws if sampling else 0):
        report((k + 1) / steps, f"tau {s.tau:g}: draw {k + 1} of {s.draws}")
        draws.append(generate(model, prepared, TemperatureSampling(s.tau, seed=s.seed + k), s.seed + k))
    learned = None
    if prior:
        report((len(draws) + 1) / steps, "learned prior")
        learned = generate(model, prepared, model.prior, None)
    prior_draws = []
    for k in range(around):
        report((len(draws) + 2 + k) / steps, f"around the prior (variation {s.variation:g}): draw {k + 1} of {around}")
        prior_draws.append(generate(model, prepared, model.prior.with_noise(variation=s.variation, seed=s.seed + k),
                                    s.seed + k))
    densities = {}  # the HR's bits/dim under each shown method's latent distribution, from one encoding
    if inputs.hr is not None:
        if sampling and s.tau > 0:
            densities[f"tau {s.tau:g}"] = TemperatureSampling(s.tau)
        if prior:
            densities["learned prior"] = model.prior
        if around:
            densities[f"prior, variation {s.variation:g}"] = model.prior.with_noise(variation=s.variation)
    values = model.resolver.bits_per_dim_each(inputs.hr, inputs.lr, list(densities.values())) if densities else []
    bpd = {name: v.item() for name, v in zip(densities, values)}
    report(1.0, "done")
    return Result(inputs, draws, learned, model.choice.name, model.precision, str(model.device),
                  time.perf_counter() - t0, s.tau, prior_draws, s.variation, bpd)


def _queued(model: LoadedModel, work, report):
    return model.call(work, on_wait=lambda ahead: report(0.0, f"waiting for {model.choice.name} ({ahead} ahead)"))


def run(model: LoadedModel, p: Plan, s: Settings, *, sampling: bool = True, prior: bool = True,
        progress=None) -> Result:
    """Temperature sampling and/or the learned prior, in this model's queue; the image is
    decoded once the request's turn comes, so waiting requests hold no pixels.
    `progress(fraction, text)` is told about each step."""
    report = progress or (lambda frac, text: None)
    return _queued(model, lambda: compute(model, p, s, sampling, prior, report), report)


def upscale_file(model: LoadedModel, path: str | Path, s: Settings, use_prior: bool, out_dir: Path,
                 max_megapixels: float, progress=None) -> Path:
    """The API call: one SR image (learned prior, or one draw at s.tau), written as a PNG."""
    if use_prior and model.prior is None:
        raise UsageError(f"{model.choice.name} has no learned prior; call with use_prior=False")
    p = plan(path, model, s, max_megapixels)
    report = progress or (lambda frac, text: None)

    def work() -> Path:
        res = compute(model, p, s, not use_prior, use_prior, report)
        out = res.prior if use_prior else res.draws[0]
        if not out.finite:
            raise ExplodingInverse(exploding_message(out))
        return write_png(out.sr, out_dir / f"{p.path.stem}_x{res.inputs.scale[1]:.3g}.png")

    return _queued(model, work, report)


def exploding_message(out: Output) -> str:
    bad = (~torch.isfinite(out.sr)).float().mean().item()
    what = "the learned prior" if out.seed is None else f"the draw with seed {out.seed}"
    hint = "" if out.seed is None else "; try another seed or a lower tau"
    return f"exploding inverse: {what} decoded to inf/NaN in {100 * bad:.2g}% of the values{hint}"


def scores(res: Result) -> list[dict]:
    """Per method: PSNR / SSIM against the HR (known-HR mode), LR-PSNR and the grid score, of
    the images as shown (`shown`). Sampling rows average over the finite draws. PSNR on RGB
    with `scale` pixels shaved."""
    lr, hr = res.inputs.lr, res.inputs.hr
    scale = res.inputs.scale
    rows = []
    methods = [("bicubic", [shown(res.bicubic)])]
    if res.draws:
        n, ok = len(res.draws), len(res.finite_draws)
        methods.append((f"tau {res.tau:g}" + (f" ({ok} of {n} finite)" if ok < n else ""),
                        [d.shown for d in res.finite_draws]))
    if res.prior is not None and res.prior.finite:
        methods.append(("learned prior", [res.prior.shown]))
    if res.prior_draws:
        n, ok = len(res.prior_draws), len(res.finite_prior_draws)
        methods.append((f"prior, variation {res.variation:g}" + (f" ({ok} of {n} finite)" if ok < n else ""),
                        [d.shown for d in res.finite_prior_draws]))
    for name, images in methods:
        if not images:
            rows.append({"method": name, "note": "every draw exploded"})
            continue
        sr = torch.stack(images)
        lrs = lr.expand(len(sr), -1, -1, -1)
        row = {"method": name, "LR-PSNR": lr_psnr(sr, lrs, scale).mean().item(), "grid": grid_score(sr, lrs).mean().item()}
        if hr is not None:
            shave = math.ceil(max(scale))
            row["PSNR"] = psnr(sr, hr.expand_as(sr), shave=shave).mean().item()
            row["SSIM"] = ssim(sr, hr.expand_as(sr)).mean().item()
        if len(images) > 1:
            row["diversity"] = 255 * diversity(sr[:, None]).item()
        key = name.split(" (")[0]
        if key in res.bits_per_dim:
            row["bits/dim"] = res.bits_per_dim[key]
        rows.append(row)
    return rows


def draw_diversity(res: Result, around_prior: bool = False) -> float | None:
    """Mean per-pixel standard deviation (0-255 scale) across the finite draws (at tau, or
    around the prior)."""
    finite = res.finite_prior_draws if around_prior else res.finite_draws
    if len(finite) < 2:
        return None
    return 255 * diversity(torch.stack([d.shown[None] for d in finite])).item()


def best_temperatures(model: LoadedModel, path: str | Path, s: Settings, max_megapixels: float,
                      crop: int = 192, region: int = 24) -> dict:
    """Fig. 2 of the paper for this image, taken as the HR: the best temperature (for PSNR)
    of each `region`-pixel block of its centre crop (at most `crop` pixels square),
    decoded from one unit-noise draw at tau = 0, 0.1, ..., 1. See `temperature.temperature_map`."""
    p = plan(path, model, replace(s, known_hr=True, draws=1), max_megapixels)
    hw = p.in_size
    top, left = max(0, (hw[0] - crop) // 2), max(0, (hw[1] - crop) // 2)
    def work() -> dict:
        hr_u8 = load_rgb_uint8(p.path, max_pixels=p.max_pixels)[:, top:top + crop, left:left + crop]
        if min(hr_u8.shape[-2:]) < max(region, 2 * (model.fixed_scale or math.ceil(s.scale))):
            raise ImageError(f"a {hw[0]}x{hw[1]} image is too small for a temperature map at x{s.scale:g}")
        taus = [round(0.1 * k, 1) for k in range(11)]
        return temperature_map(model.flow, hr_u8, model.fixed_scale or s.scale, taus, region, "psnr", s.seed,
                               device=model.device, progress=False)

    return model.call(work)
