"""`flowsr-lp demo`: what the learned prior does, in a few minutes on a laptop CPU. The bundled
small LINF, SRFlow and HCFlow models upscale crops of scikit-image's sample photos by sampling at
several temperatures (10 draws each) and with their latent modules; the report compares
fidelity, LR consistency, exploding inverses, grid artifacts and (when AlexNet's weights
are available) LPIPS, with crops and a temperature map."""
from __future__ import annotations

import html
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoints import load_flow, load_prior, read_checkpoint
from .data.folders import load_rgb_uint8
from .errors import UsageError
from .evaluate import EvalOptions, evaluate, summarise
from .metrics import LPIPSUnavailable
from .metrics.perceptual import lpips_model
from .precision import hardware_line
from .report import write_outputs
from .temperature import save_temperature_map, temperature_map
from .hub.registry import BUNDLED
from .hub.resolve import bundled_path

RETRAIN = ("flowsr-lp train-prior configs/cpu/linf-small-lp.yaml --perceptual vgg --vgg-weights vgg19-dcbb9e9d.pth "
           "--set loss.latent_weight=0 --set loss.pixel_weight=0")


#: scikit-image's bundled photos the demo crops, and the crop sizes they allow (chelsea is 300 px high)
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
MIN_SIZE, MAX_SIZE = 48, 300


def sample_photos(folder: Path, n: int, size: int) -> list[Path]:
    """Centre crops (size x size, a multiple of 12) of scikit-image's bundled photos."""
    from skimage import data as sk

    if not (1 <= n <= len(PHOTOS) and MIN_SIZE <= size <= MAX_SIZE):
        raise UsageError(f"the demo takes 1 to {len(PHOTOS)} photos (--images) of {MIN_SIZE} to {MAX_SIZE} px "
                         f"(--size), not {n} of {size} px")
    photos = {name: getattr(sk, name) for name in PHOTOS}
    size -= size % 12
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, load in list(photos.items())[:n]:
        img = load()
        h, w = img.shape[:2]
        t, l = (h - size) // 2, (w - size) // 2
        path = folder / f"{name}.png"
        Image.fromarray(np.ascontiguousarray(img[t:t + size, l:l + size, :3])).save(path)
        paths.append(path)
    return paths


def training_record(path: Path) -> dict:
    _, meta = read_checkpoint(path)
    return (meta or {}).get("training", {})


def run_demo(out: Path, images: int = 3, size: int = 288, runs: int = 10, device: str = "cpu",
             alexnet_weights: str | None = None, progress: bool = True, precision: str = "auto") -> dict:
    t0 = time.time()
    out = Path(out)
    hr_dir = out / "photos" / "HR"
    photos = sample_photos(hr_dir, images, size)
    notes = []
    use_lpips = True
    try:
        lpips_model(device, alexnet_weights)
    except LPIPSUnavailable as e:
        use_lpips = False
        notes.append("LPIPS not shown: AlexNet's ImageNet weights are not available here (offline?); "
                     "pass --alexnet-weights PATH (torchvision's alexnet-owt-7be5be79.pth) to add it. "
                     f"({str(e).split('. ')[0]})")
    notes.append("The bundled models were trained on the CPU without the VGG19 perceptual loss (its ImageNet weights "
                 "were not available): latent modules with pixel L1 + 0.1 latent L1. The paper's loss: " + RETRAIN)
    # (label, flow, prior, scales, temperatures, variations around the prior); HCFlow's decode
    # costs 2.5x SRFlow's (its finer level's RRDB features run at HR/2 for every latent), so
    # it shows tau 0, its default tau and the prior, and the demo stays within its time budget
    setups = [("LINF", "linf-small", "linf-small-lp", [3.0, 4.0], [0.0, 0.4, 0.8], [0.5]),
              ("SRFlow", "srflow-small", "srflow-small-lp", [4.0], [0.0, 0.5, 0.9], [0.5]),
              ("HCFlow", "hcflow-small", "hcflow-small-lp", [4.0], [0.0, 0.9], [])]
    rows, crops, models = [], [], {}
    for label, flow_name, prior_name, scales, taus, variations in setups:
        flow = load_flow(bundled_path(flow_name), device=device)
        prior = load_prior(bundled_path(prior_name), device=device)
        models[label] = {"flow": flow_name, "prior": prior_name, "flow_training": training_record(bundled_path(flow_name)),
                         "prior_training": training_record(bundled_path(prior_name))}
        opts = EvalOptions(data=[str(hr_dir.parent)], scales=scales, taus=taus, runs=runs, use_lpips=use_lpips,
                           alexnet_weights=alexnet_weights, lr_source="make", report_images=1, label=label,
                           precision=precision, variations=variations, bpd=True, sr_space=use_lpips)
        r, n, c = evaluate(flow, prior, opts, out, progress=progress)
        rows += r
        notes += n
        crops += c
    # the temperature map (Fig. 2) of the first photo, with the LINF flow
    flow = load_flow(bundled_path("linf-small"), device=device)
    prior = load_prior(bundled_path("linf-small-lp"), device=device)
    metric = "lpips" if use_lpips else "psnr"
    tmap = temperature_map(flow, load_rgb_uint8(photos[0]), 4.0, [round(0.1 * k, 1) for k in range(11)], 24,
                           metric, 0, alexnet_weights, device, progress=False,
                           prior=prior if getattr(prior.config, "scale_head", False) else None)
    tsum = save_temperature_map(tmap, out / "temperature")
    tmap_html = (f"<p>{html.escape(photos[0].stem)} x4, best temperature of each 24x24 region for the whole-image "
                 f"{metric.upper()} (Fig. 2 of the paper): one fixed temperature is best at tau="
                 f"{tsum['best_single_tau']:g} ({tsum['best_single_score']:.3f}); per-region temperatures reach "
                 f"{tsum['per_region_score']:.3f}."
                 + (f" Right: the learned prior's predicted scale sigma (a learned per-region temperature); its rank "
                    f"correlation with the best temperature over the regions is {tsum['rank_correlation']:.2f}."
                    if tsum.get("rank_correlation") is not None else "")
                 + "</p><img src='temperature/temperature_map.png' alt='temperature map'>")
    summary = summarise(rows)
    meta = {"description": f"bundled small LINF, SRFlow and HCFlow, {len(photos)} scikit-image photos ({size}x{size} HR), "
                           f"{runs} draws per temperature", "models": models, "runs": runs,
            "seeds": {f"run {r}": r for r in range(runs)}, "torch": torch.__version__,
            "device": device, "precision": precision, "hardware": hardware_line(), "seconds": round(time.time() - t0, 1)}
    paths = write_outputs(out, rows, summary, crops, meta, notes, "FlowSR-LP demo: learned prior vs temperature",
                          extra=[("Temperature map", tmap_html)])
    (out / "demo.json").write_text(json.dumps({"summary": summary, "temperature_map": tsum, "notes": notes}, indent=1))
    return {"summary": summary, "paths": paths, "seconds": time.time() - t0, "notes": notes}
