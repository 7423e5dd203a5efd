"""Small models and images for fast tests."""
from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage import data as skdata

from flowsr_lp import save_flow
from flowsr_lp.flows.linf import LINF, LINFConfig
from flowsr_lp.flows.srflow import SRFlow, SRFlowConfig
from flowsr_lp.priors import LINFLatentModule, LINFPriorConfig


def tiny_linf(patch_size: int = 3, encoder: str = "edsr-baseline", seed: int = 0) -> LINF:
    torch.manual_seed(seed)
    args = {"n_resblocks": 1, "n_feats": 8} if encoder == "edsr-baseline" else {"nf": 8, "nb": 1, "gc": 4}
    flow = LINF(LINFConfig(encoder=encoder, encoder_args=args, patch_size=patch_size, hidden_dim=16, flow_layers=3))
    with torch.no_grad():  # make the flow far from identity so tests can fail
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return flow.eval()


def write_png16(path, a: np.ndarray) -> None:
    """Write a 16-bit PNG (H x W x C uint16, C in 1, 3, 4); Pillow cannot write these."""
    h, w, c = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ctype = {1: 0, 3: 2, 4: 6}[c]
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def tiny_srflow(scale: int = 4, seed: int = 0, perturb: float = 0.05):
    torch.manual_seed(seed)
    flow = SRFlow(SRFlowConfig(scale=scale, nf=8, nb=2, gc=4, K=2, taps=(0, 1), hidden_channels=8))
    with torch.no_grad():  # zero-initialised couplings would make the test trivially pass
        for p in flow.parameters():
            p.add_(perturb * torch.randn_like(p))
    return flow.eval()


SMALL = {
    "unet": dict(generator="unet", dim=8, depth=3),
    "edsr": dict(generator="edsr-baseline-latent", dim=8, n_resblocks=2),
    "swin": dict(generator="swin_latent", embed_dim=8, depths=(1, 2), num_heads=(1, 2), window_size=7),
}


def tiny_linf_prior(kind="unet", inputs="both", seed=0):
    torch.manual_seed(seed)
    return LINFLatentModule(LINFPriorConfig(inputs=inputs, **SMALL[kind])).eval()


def natural_images(folder, n: int = 8, size: int = 96):
    """n crops of scikit-image's bundled photos, written as PNGs (small training sets)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    for i in range(n):
        img = photos[i % len(photos)]
        r = (i // len(photos)) * size // 2
        Image.fromarray(img[r:r + size, r:r + size]).save(folder / f"img{i}.png")
    return folder


def training_fixtures(n: int, size: int):
    """The module-scoped `images` (a folder of n natural crops, size px) and `flow_file` (a tiny
    saved LINF) fixtures of the training tests: `images, flow_file = training_fixtures(8, 96)`."""
    @pytest.fixture(scope="module")
    def images(tmp_path_factory):
        return str(natural_images(tmp_path_factory.mktemp("imgs"), n=n, size=size))

    @pytest.fixture(scope="module")
    def flow_file(tmp_path_factory):
        return str(save_flow(tiny_linf(3), tmp_path_factory.mktemp("flow") / "tiny.safetensors"))

    return images, flow_file


def write_recipe(path, **sections) -> str:
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def blocky_linf():
    """A tiny 3x3 LINF whose sampled residual patches are nearly constant inside a patch and
    independent across patches: the textbook source of grid artifacts."""
    flow = tiny_linf(3)
    with torch.no_grad():
        for lin in flow.imnet.linears:
            lin._weight.copy_(torch.eye(27))
            lin.bias.zero_()
        last = flow.layers[-1]
        last.weight.zero_()
        last.bias.zero_()  # scale = sigmoid(2) + 1e-4 everywhere, shift 0
        mix = torch.zeros(27, 27)  # each pixel of a patch = the patch's mean + a little of its own
        for c in range(3):
            mix[c * 9:(c + 1) * 9, c * 9:(c + 1) * 9] = 1.0
        smooth = mix + 0.2 * torch.eye(27)
        flow.imnet.last._weight.copy_(torch.linalg.inv(smooth))  # decode applies its inverse
        flow.imnet.last.bias.zero_()
    return flow


def explode_at_tau(monkeypatch, flow_class, tau: float = 10.0):
    """Draws of `flow_class` at temperature `tau` (the largest the package accepts) become
    1e30-sized latents: their inverse overflows to inf/NaN, as the real exploding inverse."""
    real = flow_class.sample_latent

    def sample_latent(self, ctx, t, generator=None):
        latent = real(self, ctx, t, generator)
        return tuple(z * 1e29 for z in latent) if t == tau else latent

    monkeypatch.setattr(flow_class, "sample_latent", sample_latent)
