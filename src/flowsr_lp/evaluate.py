"""`flowsr-lp evaluate`: the paper's protocols over data sets, scales, temperatures and the
learned prior; per-image rows, means, %Inf over repeated runs, diversity and grid score,
written as CSV, JSON, a Markdown table and an HTML report (see report.py)."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .data.folders import find_images, load_rgb_uint8
from .data.resize import imresize, modcrop
from .errors import ImageError
from .metrics import diversity, grid_score, lpips, lr_psnr, psnr, sr_space_diversity, ssim, to_uint8_like_srflow
from .metrics.perceptual import lpips_map, lpips_model
from .pipeline import LatentStrategy, SRResult, SuperResolver, TemperatureSampling, batched, bicubic
from .report import save_crops
from .tiles import batch_limit, release_cached_memory, tile_scale, tiled_result

log = logging.getLogger(__name__)

DATA_ROOTS_ENV = "FLOWSR_LP_DATA"
LEFT_OUT = "left out of every mean"  # in the note of each unreadable input (the CLI then exits 1)
METRICS = ("psnr", "ssim", "lpips", "lr_psnr", "grid")


@dataclass
class Dataset:
    name: str
    hr: Path
    lr: Path | None  # folder holding X2/X3/X4 ... subfolders of official LR images, if any

    def lr_file(self, stem: str, scale: float) -> Path | None:
        if self.lr is None or scale != int(scale):
            return None
        folder = self.lr / f"X{int(scale)}"
        for cand in (f"{stem}x{int(scale)}", stem):
            for ext in (".png", ".PNG", ".bmp", ".jpg"):
                if (folder / (cand + ext)).is_file():
                    return folder / (cand + ext)
        return None


def data_roots() -> list[Path]:
    """Where named data sets are looked for: $FLOWSR_LP_DATA (os.pathsep-separated), then
    ./data and ./data/benchmark."""
    roots = [Path(p) for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p]
    return roots + [Path("data"), Path("data") / "benchmark"]


def resolve_dataset(spec: str) -> Dataset:
    """A folder (of HR images, or holding HR/ and LR_bicubic/), or a set name looked up in
    $FLOWSR_LP_DATA, ./data, ./data/benchmark (the layout `flowsr-lp data prepare` writes)."""
    p = Path(spec)
    if p.is_dir():
        if (p / "HR").is_dir():
            return Dataset(p.name, p / "HR", p / "LR_bicubic" if (p / "LR_bicubic").is_dir() else None)
        return Dataset(p.name, p, None)
    if spec.upper().startswith("DIV2K"):
        for root in data_roots():
            if (root / "DIV2K" / "DIV2K_valid_HR").is_dir():
                lr = root / "DIV2K" / "DIV2K_valid_LR_bicubic"
                return Dataset("DIV2K", root / "DIV2K" / "DIV2K_valid_HR", lr if lr.is_dir() else None)
    for root in data_roots():
        if (root / spec / "HR").is_dir():
            return resolve_dataset(str(root / spec))
    tried = ", ".join(str(r) for r in data_roots())
    raise FileNotFoundError(f"data set {spec!r} not found (looked for a folder, and for {spec}/HR under {tried}); "
                            f"`flowsr-lp data download {spec} --prepare` fetches the public ones")


def make_pair(path: Path, ds: Dataset, scale: float, lr_source: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(HR float in [0,1], LR float in [0,1], where the LR came from). HR is modcropped so
    that the LR size times the scale is an integer."""
    hr = load_rgb_uint8(path)
    s_int = int(scale) if scale == int(scale) else None
    if s_int:
        hr = modcrop(hr, s_int)
    lr_path = ds.lr_file(path.stem, scale) if lr_source in ("auto", "folder") else None
    if lr_path is not None:
        lr = load_rgb_uint8(lr_path)
        if tuple(lr.shape[-2:]) != (hr.shape[-2] // s_int, hr.shape[-1] // s_int):
            raise ImageError(f"{lr_path}: LR size {tuple(lr.shape[-2:])} does not match HR {tuple(hr.shape[-2:])} / {s_int}")
        return hr.float() / 255, lr.float() / 255, "file"
    if lr_source == "folder":
        raise FileNotFoundError(f"no official LR x{scale:g} image for {path.name} in {ds.lr}")
    lr_size = (round(hr.shape[-2] / scale), round(hr.shape[-1] / scale))
    lr = imresize(hr, out_size=lr_size)  # uint8 in, uint8 out: an LR image, as files store it
    return hr.float() / 255, lr.float() / 255, "matlab-bicubic"


@dataclass
class EvalOptions:
    data: list[str]
    scales: list[float] = field(default_factory=lambda: [4.0])
    taus: list[float] = field(default_factory=lambda: [0.8])
    runs: int = 1
    protocol: str = "linf"  # linf | srflow
    seed: int = 0
    use_lpips: bool = True
    alexnet_weights: str | None = None
    max_images: int | None = None
    lr_source: str = "auto"  # auto | make | folder
    report_images: int = 2
    label: str = ""  # prefixed to method names ("LINF tau=0.8"), to put several flows in one report
    bicubic: bool = False  # add a bicubic baseline row (MATLAB-style bicubic upsampling of the LR)
    precision: str = "fp32"  # the SuperResolver's compute precision (fp32 | bf16 | fp16 | auto)
    batch_size: int = 8  # same-size images upscaled together (see tiles.batch_limit)
    variations: list[float] = field(default_factory=list)  # rows "LP variation=t": samples around the prior
    bpd: bool = False  # a bits/dim column: the HR's density under each method's latent distribution
    sr_space: bool = False  # the NTIRE SR-space diversity score over each method's runs (LPIPS maps)


def protocol_metrics(sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor, scale: float, dataset: str,
                     opts: EvalOptions) -> dict:
    """Metrics of one finite SR (1 x 3 x H x W) under the chosen protocol."""
    s = int(math.ceil(scale))
    if opts.protocol == "srflow":  # SRFlow's Measure: uint8 (truncated), full RGB, skimage SSIM
        q = to_uint8_like_srflow(sr)
        hq = to_uint8_like_srflow(hr)
        out = {"psnr": psnr(q, hq).item(), "ssim": ssim(q, hq, kind="skimage").item(),
               "lr_psnr": lr_psnr(q.double() / 255, lr, scale).item()}
        img, ref = q.float() / 255, hq.float() / 255
    else:  # LINF / LINF-LP: floats; Y channel on benchmarks, RGB on DIV2K; shave = scale
        y = not dataset.upper().startswith("DIV2K")
        out = {"psnr": psnr(sr, hr, shave=s, y_channel=y).item(), "ssim": ssim(sr, hr, kind="matlab").item(),
               "lr_psnr": lr_psnr(sr, lr, scale, shave=s).item()}
        img, ref = sr, hr
    out["grid"] = grid_score(sr, lr).item()
    if opts.use_lpips:
        out["lpips"] = lpips(img, ref, opts.alexnet_weights).item()
    return out


def methods(opts: EvalOptions, resolver: SuperResolver) -> list[tuple[str, float | None, list[LatentStrategy]]]:
    """(method name, tau or None, one strategy per run): sampling at each tau (runs seeded
    seed, seed + 1, ...; one run at tau 0, which is deterministic), then the learned prior."""
    pre = f"{opts.label} " if opts.label else ""
    out = [(f"{pre}tau={t:g}", t, [TemperatureSampling(t, seed=opts.seed + r) for r in range(opts.runs if t > 0 else 1)])
           for t in opts.taus]
    if resolver.prior is not None:
        out.append((f"{pre}LP", None, [resolver.strategy]))
        out += [(f"{pre}LP variation={t:g}", None,
                 [resolver.strategy.with_noise(variation=t, seed=opts.seed + r) for r in range(opts.runs)])
                for t in opts.variations if t > 0]
    return out


def density_strategy(strategies: list[LatentStrategy]) -> LatentStrategy | None:
    """The latent distribution a method samples from (for bits/dim), or None: tau 0 is a
    point mass."""
    s = strategies[0]
    if isinstance(s, TemperatureSampling) and not (s.tau is None or s.tau > 0):
        return None
    return s


def evaluate(flow, prior, opts: EvalOptions, out_dir: Path, rank: int = 0, world: int = 1, progress: bool = True):
    """Rows (one per image, scale, method and run) and report crops for this process's share
    of the images; rank r takes images i with i % world == r."""
    resolver = SuperResolver(flow, prior, precision=opts.precision)
    device = resolver.device
    fixed = getattr(flow, "fixed_scale", None)
    rows, notes, crops = [], [], []
    if opts.use_lpips or opts.sr_space:
        lpips_model(device, opts.alexnet_weights)  # fail now, not after hours of work
    scales = [s for s in opts.scales if fixed is None or s == fixed]
    if fixed is not None and len(scales) < len(opts.scales):
        notes.append(f"{flow.kind} is a fixed-scale x{fixed} flow: scales {[s for s in opts.scales if s != fixed]} skipped")
    jobs = []
    for spec in opts.data:
        ds = resolve_dataset(spec)
        files = find_images([ds.hr])[: opts.max_images]
        jobs += [(ds, i, f, s) for i, f in enumerate(files) for s in scales]
    mine = [j for j in jobs if j[1] % world == rank]
    bar = tqdm(total=len(mine), desc="evaluate", unit="img", disable=not progress or rank != 0)
    pending: dict[tuple, list] = {}  # same-size pairs waiting for a batch, by (LR size, HR size)
    for ds, i, path, scale in mine:
        bar.set_postfix_str(f"{ds.name} x{scale:g} {path.name}")
        try:
            hr, lr, lr_from = make_pair(path, ds, scale, opts.lr_source)
        except (ImageError, ValueError) as e:  # a corrupt or unusable image: say so, go on with the others
            msg = " ".join(str(e).split())
            log.error("%s", msg)
            notes.append(f"{ds.name} x{scale:g}: {path.name} {LEFT_OUT}: {msg}")
            bar.update()
            continue
        key = (tuple(lr.shape[-2:]), tuple(hr.shape[-2:]))
        group = pending.setdefault(key, [])
        group.append((ds, i, path, scale, hr[None].to(device), lr[None].to(device), lr_from))
        if len(group) >= batch_limit(key[0], opts.batch_size):
            _evaluate_batch(resolver, pending.pop(key), opts, out_dir, rows, crops, bar)
        elif sum(map(len, pending.values())) > 2 * opts.batch_size:  # many sizes: bound what waits
            _evaluate_batch(resolver, pending.pop(next(iter(pending))), opts, out_dir, rows, crops, bar)
    for group in pending.values():
        _evaluate_batch(resolver, group, opts, out_dir, rows, crops, bar)
    bar.close()
    return rows, notes, crops


def _upscaled(resolver: SuperResolver, items: list, plan, tiled: bool = False) -> dict | None:
    """{method: one `SRResult` per run} of same-size pairs as one batch, or of one pair in
    tiles; None when that ran out of memory (or the size cannot be tiled)."""
    lr, size = torch.cat([it[5] for it in items]), tuple(items[0][4].shape[-2:])
    try:
        if not tiled:
            prepared = resolver.prepare(lr, size=size)
            return {m: [resolver.generate(prepared, batched(s, len(items))) for s in strategies]
                    for m, _, strategies in plan}
        scale = tile_scale(resolver, lr, size, above=0)
        if scale is None:
            return None
        return {m: [_on(lr.device, tiled_result(resolver, lr, scale, s)) for s in strategies]
                for m, _, strategies in plan}
    except torch.OutOfMemoryError:
        pass
    release_cached_memory()  # outside the handler: its traceback no longer holds the tensors
    return None


def _on(device: torch.device, result: SRResult) -> SRResult:
    return SRResult(result.images.to(device), result.finite, result.strategy)


def _evaluate_batch(resolver: SuperResolver, items: list, opts: EvalOptions, out_dir: Path, rows: list,
                    crops: list, bar) -> None:
    """Rows and report crops of same-size pairs (ds, i, path, scale, hr, lr, lr_from),
    upscaled as one batch (each image seeded as when alone)."""
    plan = methods(opts, resolver)
    results = _upscaled(resolver, items, plan)
    if results is None:  # out of memory: the images one by one, one alone in tiles
        if len(items) > 1:
            log.warning("out of memory upscaling %d images together; running them one by one", len(items))
            for item in items:
                _evaluate_batch(resolver, [item], opts, out_dir, rows, crops, bar)
            return
        results = _upscaled(resolver, items, plan, tiled=True)
        if results is None:
            log.error("%s x%g: %s out of memory even in tiles: left out", items[0][0].name, items[0][3], items[0][2].name)
            bar.update()
            return
    bpd = _bits_per_dim(resolver, items, plan) if opts.bpd else {}
    for k, (ds, i, path, scale, hr, lr, lr_from) in enumerate(items):
        base = {"dataset": ds.name, "image": path.stem, "scale": scale, "lr_source": lr_from}
        shown = {}
        if opts.bicubic:
            sr = bicubic(lr, tuple(hr.shape[-2:]))
            shown["bicubic"] = sr
            rows.append({**base, "method": f"{opts.label} bicubic".strip(), "tau": "", "run": 0, "seed": "",
                         "finite": True, "inf_rate": 0.0, **protocol_metrics(sr, hr, lr, scale, ds.name, opts)})
        for method, tau, strategies in plan:
            mine = [r.images[k : k + 1] for r in results[method]]
            finite = [bool(r.finite[k]) for r in results[method]]  # the pipeline's own check
            inf = 100.0 * (finite.count(False) / len(finite))  # the paper's %Inf (metrics.inf_rate)
            samples = [x.clamp(0, 1) for x, ok in zip(mine, finite) if ok]
            div = diversity(torch.stack(samples)).item() if len(samples) > 1 else None
            space = (sr_space_diversity(torch.cat(samples), hr, math.ceil(scale),
                                        lambda a, b: lpips_map(a, b, opts.alexnet_weights))
                     if opts.sr_space and len(samples) > 1 else None)
            for run, (strategy, images, ok) in enumerate(zip(strategies, mine, finite)):
                row = {**base, "method": method, "tau": "" if tau is None else tau, "run": run,
                       "seed": "" if tau is None else strategy.seed, "finite": ok, "inf_rate": inf}
                if ok:
                    sr = images.clamp(0, 1)
                    row.update(protocol_metrics(sr, hr, lr, scale, ds.name, opts))
                    shown.setdefault(method, sr)
                    if div is not None:
                        row["diversity"] = div
                    if space is not None:
                        row["sr_space"] = space
                if method in bpd:
                    row["bpd"] = bpd[method][k]
                rows.append(row)
        if i < opts.report_images:
            crops.append(save_crops(out_dir, ds.name, path.stem, scale, hr, lr, shown, opts.label))
        bar.update()


def _bits_per_dim(resolver: SuperResolver, items: list, plan) -> dict[str, list[float]]:
    """{method: bits/dim of each item's HR under the method's latent distribution}."""
    hr, lr = torch.cat([it[4] for it in items]), torch.cat([it[5] for it in items])
    out = {}
    for method, _, strategies in plan:
        s = density_strategy(strategies)
        if s is not None:
            out[method] = resolver.bits_per_dim(hr, lr, s).tolist()
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Means per (dataset, scale, method): metrics averaged over finite runs of an image,
    then over images; %Inf (each image's share of runs that exploded) over images.
    `images` counts the images evaluated, `covers` how many of them each metric's mean
    covers: an image whose every run exploded has no metric values (see report.coverage)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], float(r["scale"]), r["method"]), []).append(r)
    out = []
    for (ds, scale, method), rs in groups.items():
        per_image: dict[str, list[dict]] = {}
        for r in rs:
            per_image.setdefault(r["image"], []).append(r)
        entry = {"dataset": ds, "scale": scale, "method": method, "images": len(per_image), "runs": len(rs),
                 "inf_rate": sum(float(img_rows[0]["inf_rate"]) for img_rows in per_image.values()) / len(per_image)}
        entry["covers"] = {}
        for m in METRICS + ("diversity", "sr_space", "bpd"):
            vals = []
            for img_rows in per_image.values():
                v = [float(r[m]) for r in img_rows if r["finite"] and r.get(m, "") not in ("", None)]
                if v:
                    vals.append(sum(v) / len(v))
            entry[m] = sum(vals) / len(vals) if vals else None
            if vals:
                entry["covers"][m] = len(vals)
        out.append(entry)
    order = {m: k for k, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    return sorted(out, key=lambda e: (e["dataset"], e["scale"], order[e["method"]]))
