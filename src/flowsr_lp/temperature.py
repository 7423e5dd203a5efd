"""`flowsr-lp temperature-map`: the paper's Fig. 2. For one HR image, decode the same unit
noise at every temperature of a grid, then find for each region the temperature that makes
the whole image best under a metric; saved as a heat map, a table and the composite image.

Regions are composited in image space. For LINF this is exact when region borders fall on
the 3x3 patch grid (patches decode independently given their latent); for SRFlow it is an
approximation (its latents are not local)."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from .data.folders import load_rgb_uint8
from .data.resize import imresize, modcrop
from .images import ImageError, write_png
from .metrics import lpips, psnr
from .pipeline import LearnedPrior, SuperResolver, TemperatureSampling


def samples_at_temperatures(flow, lr, hr_size, taus, seed: int) -> torch.Tensor:
    """T x 3 x H x W: one unit-noise draw (from `seed`), scaled by each temperature, upscaled
    and clamped (non-finite pixels to 0 / 1)."""
    resolver = SuperResolver(flow)
    prepared = resolver.prepare(lr, size=hr_size)
    return torch.cat([resolver.generate(prepared, TemperatureSampling(t, seed=seed)).clamped() for t in taus])


def sigma_image(flow, prior, lr: torch.Tensor, hr_size: tuple[int, int]) -> torch.Tensor:
    """H x W: the learned scale of a latent module with a scale head in image space: per latent
    part, the mean over channels of log sigma, brought to the HR size (nearest), averaged over
    the parts weighted by their latent elements per HR pixel, then exp."""
    if not getattr(prior.config, "scale_head", False):
        raise ValueError("this latent module has no scale head: there is no learned scale to draw")
    resolver, strategy = SuperResolver(flow, prior), LearnedPrior(prior)
    prepared = resolver.prepare(lr, size=hr_size)  # whole or in tiles, as the resolver runs it
    _, log_sigma = strategy.predict(resolver.latent_inputs(prepared).start(strategy.start_kind), prepared.lr)
    H, W = hr_size
    total, weight = torch.zeros(H, W), 0.0
    for ls in log_sigma:
        per_pixel = ls.shape[1] * ls.shape[-2] * ls.shape[-1] / (H * W)
        m = ls[0].float().mean(0).cpu()  # each latent cell covers fh x fw HR pixels (a few padded)
        fh, fw = -(-H // m.shape[0]), -(-W // m.shape[1])
        m = m.repeat_interleave(fh, 0).repeat_interleave(fw, 1)[:H, :W]
        total, weight = total + per_pixel * m, weight + per_pixel
    return torch.exp(total / weight)


def region_means(img: torch.Tensor, region: int) -> torch.Tensor:
    """rows x cols: the mean of an H x W map over each region of `region_slices`."""
    grid = region_slices(tuple(img.shape[-2:]), region)
    return torch.tensor([[img[rs, cs].mean().item() for rs, cs in row] for row in grid])


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman's rank correlation of two equally shaped maps (ties get their mean rank);
    None when either map is constant (it has no ranking)."""
    from scipy.stats import spearmanr

    x, y = a.flatten().double().numpy(), b.flatten().double().numpy()
    if x.min() == x.max() or y.min() == y.max():
        return None
    return float(spearmanr(x, y).statistic)


def region_slices(size: tuple[int, int], region: int):
    H, W = size
    return [[(slice(r, min(r + region, H)), slice(c, min(c + region, W))) for c in range(0, W, region)]
            for r in range(0, H, region)]


def best_temperatures(srs: torch.Tensor, hr: torch.Tensor, region: int, metric: str,
                      alexnet_weights=None, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(index of the best temperature per region, composite image, its whole-image score).
    Scores are "lower is better" (-PSNR, L1, LPIPS). Additive metrics (psnr, l1) are solved
    region by region exactly; LPIPS by one pass of coordinate descent over the regions,
    starting from the best single temperature, each candidate scored on the whole image."""
    grid = region_slices(tuple(hr.shape[-2:]), region)
    T = srs.shape[0]
    choice = torch.zeros(len(grid), len(grid[0]), dtype=torch.long)
    if metric in ("psnr", "l1"):
        err = (srs - hr).square() if metric == "psnr" else (srs - hr).abs()
        for i, row in enumerate(grid):
            for j, (rs, cs) in enumerate(row):
                choice[i, j] = err[:, :, rs, cs].flatten(1).sum(1).argmin()
    else:
        whole = lpips(srs, hr.expand_as(srs), alexnet_weights)
        choice[:] = int(whole.argmin())
        current = srs[choice[0, 0]].clone()
        cells = [(i, j) for i in range(len(grid)) for j in range(len(grid[0]))]
        for i, j in tqdm(cells, desc="temperature search", disable=not progress, file=sys.stderr):
            rs, cs = grid[i][j]
            cands = current.expand(T, -1, -1, -1).clone()
            cands[:, :, rs, cs] = srs[:, :, rs, cs]
            choice[i, j] = int(lpips(cands, hr.expand_as(cands), alexnet_weights).argmin())
            current[:, rs, cs] = srs[choice[i, j], :, rs, cs]
    composite = torch.empty_like(hr[0])
    for i, row in enumerate(grid):
        for j, (rs, cs) in enumerate(row):
            composite[:, rs, cs] = srs[choice[i, j], :, rs, cs]
    return choice, composite, score(composite[None], hr, metric, alexnet_weights)


def score(img, hr, metric, alexnet_weights=None) -> float:
    if metric == "psnr":
        return -psnr(img, hr).item()
    if metric == "l1":
        return (img - hr).abs().mean().item()
    return lpips(img, hr, alexnet_weights).item()


def heat_map(taus_map: torch.Tensor, hr: torch.Tensor, path: Path, metric: str,
             sigma: torch.Tensor | None = None) -> None:
    fig = Figure(figsize=(13.5 if sigma is not None else 9, 4.2), dpi=110)
    axes = fig.subplots(1, 3 if sigma is not None else 2)
    axes[0].imshow(hr[0].permute(1, 2, 0).cpu().numpy())
    axes[0].set_title("HR")
    H, W = hr.shape[-2:]
    im = axes[1].imshow(taus_map.numpy(), cmap="magma", extent=(0, W, H, 0), vmin=0)
    axes[1].set_title(f"best temperature per region ({metric.upper()})")
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="tau")
    if sigma is not None:
        im = axes[2].imshow(sigma.numpy(), cmap="magma", extent=(0, W, H, 0))
        axes[2].set_title("the prior's learned scale sigma")
        axes[2].axis("off")
        fig.colorbar(im, ax=axes[2], fraction=0.046, label="sigma")
    fig.tight_layout()
    fig.savefig(path)


def temperature_map(flow, hr_u8: torch.Tensor, scale: float, taus: list[float], region: int, metric: str,
                    seed: int = 0, alexnet_weights=None, device="cpu", progress: bool = True, prior=None) -> dict:
    """Search the best temperature per region of one HR image (uint8 3 x H x W); the result
    holds the map, the composite image and the scores. With a latent module that has a scale
    head (`prior`), also its learned scale per region and the rank correlation of the two."""
    scale = getattr(flow, "fixed_scale", None) or scale
    s = int(scale) if float(scale).is_integer() else 1
    h, w = hr_u8.shape[-2:]
    hr_u8 = modcrop(hr_u8, 2 * s if getattr(flow, "fixed_scale", None) else s)
    lr_hw = (round(hr_u8.shape[-2] / scale), round(hr_u8.shape[-1] / scale))
    if min(lr_hw) < 1:
        raise ImageError(f"a {h}x{w} image is too small for x{scale:g}: its LR would be empty")
    lr = imresize(hr_u8, out_size=lr_hw).float() / 255
    hr = (hr_u8.float() / 255)[None].to(device)
    with torch.no_grad():
        srs = samples_at_temperatures(flow, lr[None].to(device), tuple(hr.shape[-2:]), taus, seed)
        choice, composite, best = best_temperatures(srs, hr, region, metric, alexnet_weights, progress)
        singles = [score(srs[k:k + 1], hr, metric, alexnet_weights) for k in range(len(taus))]
    sign = -1 if metric == "psnr" else 1  # report PSNR as PSNR
    k_best = min(range(len(taus)), key=lambda k: singles[k])
    taus_map = torch.tensor(taus)[choice]
    extra = {}
    if prior is not None:
        with torch.no_grad():
            sigma = sigma_image(flow, prior, lr[None].to(device), tuple(hr.shape[-2:]))
        regions = region_means(sigma, region)
        extra = {"sigma_map": regions.tolist(), "rank_correlation": rank_correlation(regions, taus_map),
                 "_sigma": sigma}
    return {**extra,"scale": scale, "metric": metric, "region": region, "seed": seed, "taus": taus,
            "per_temperature": {f"{t:g}": sign * v for t, v in zip(taus, singles)},
            "best_single_tau": taus[k_best], "best_single_score": sign * singles[k_best],
            "per_region_score": sign * best, "map": taus_map.tolist(),
            "_hr": hr.cpu(), "_composite": composite.cpu()}


def save_temperature_map(result: dict, out: Path) -> dict:
    """temperature_map.png (heat map), composite.png, temperature_map.csv / .json."""
    out.mkdir(parents=True, exist_ok=True)
    taus_map = torch.tensor(result["map"])
    heat_map(taus_map, result["_hr"], out / "temperature_map.png", result["metric"], result.get("_sigma"))
    write_png(result["_composite"], out / "composite.png")
    with open(out / "temperature_map.csv", "w", newline="") as f:
        csv.writer(f).writerows([[f"{t:g}" for t in row] for row in taus_map.tolist()])
    summary = {k: v for k, v in result.items() if not k.startswith("_")}
    (out / "temperature_map.json").write_text(json.dumps(summary, indent=1))
    return summary
