"""HCFlow's learned prior: the multi-part UNet latent module (`srflow-lp` family, one branch
per split-off part at its own resolution, with the LR branch) on an HCFlow, through the one
pipeline, trained by `train-prior` through the frozen flow."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from flowsr_lp import load_flow, load_prior, save_flow
from flowsr_lp.cli import main
from flowsr_lp.pipeline import LearnedPrior, SuperResolver, TemperatureSampling
from flowsr_lp.priors import SRFlowLatentModule, SRFlowPriorConfig

from helpers import natural_images, read_csv, write_recipe
from test_hcflow import tiny_hcflow


def hcflow_prior(flow, head=True):
    torch.manual_seed(1)
    return SRFlowLatentModule(SRFlowPriorConfig(dim=8, depth=1, latent_channels=flow.latent_channels, with_lr=True,
                                                scale_head=head)).eval()


@pytest.mark.usefixtures("no_grad")
def test_the_pipeline_runs_hcflow_with_its_prior():
    flow = tiny_hcflow(4)
    prior = hcflow_prior(flow)
    lr = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    r = SuperResolver(flow, prior)
    out = r(lr).images
    assert out.shape == (1, 3, 32, 40) and torch.isfinite(out).all()
    ctx = flow.condition(lr, (32, 40))
    mu, log_sigma = LearnedPrior(prior).distribution(flow, lr, ctx)
    assert [tuple(m.shape) for m in mu] == [tuple(s) for s in flow.latent_shapes(ctx)] == [tuple(s.shape) for s in log_sigma]
    torch.testing.assert_close(out, flow.decode(mu, ctx))
    a = r(lr, strategy=LearnedPrior(prior, variation=0.5, seed=2)).images
    assert (a - out).abs().max() > 1e-4 and torch.equal(a, r(lr, strategy=LearnedPrior(prior, variation=0.5, seed=2)).images)
    hr = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    for s in (None, TemperatureSampling(0.8), LearnedPrior(prior)):
        assert math.isfinite(r.bits_per_dim(hr, lr, s).item())


def test_train_prior_through_a_frozen_hcflow(tmp_path):
    flow = tiny_hcflow(4)
    flow_file = save_flow(flow, tmp_path / "hcflow.safetensors")
    images = natural_images(tmp_path / "img", n=4, size=64)
    cfg = write_recipe(tmp_path / "r.yaml", task="prior", flow={"checkpoint": str(flow_file)},
                       prior={"family": "srflow-lp", "config": {"dim": 8, "depth": 1, "latent_channels": [21, 6],
                                                                "with_lr": True, "scale_head": True}},
                       data={"train": {"folders": [str(images)], "repeat": 4}, "crop": {"kind": "srflow", "hr_size": 32}},
                       optim={"batch_size": 4, "iterations": 24, "lr": 2e-3},
                       loss={"perceptual": "none"},
                       run={"out": str(tmp_path / "run"), "log_every": 2, "ckpt_every": 12, "seed": 0})
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    assert main(["train-prior", cfg]) == 0
    rows = read_csv(tmp_path / "run" / "log.csv")
    first, last = [float(r["l1"]) for r in rows[:3]], [float(r["l1"]) for r in rows[-3:]]
    assert sum(last) < sum(first) and all("scale_nll" in r for r in rows)
    prior = load_prior(tmp_path / "run" / "model.safetensors")
    assert prior.config.latent_channels == (21, 6) and prior.config.scale_head
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())


def test_the_bundled_hcflow_upscales_with_its_prior(tmp_path):
    """`upscale --flow hcflow-small --prior hcflow-small-lp`, and the same through
    `SuperResolver`: the same 8-bit image; the prior's name alone brings its flow."""
    # a photo-like LR (on uniform noise, far from any photo, this small flow's inverse explodes)
    src = tmp_path / "lr.png"
    Image.open(natural_images(tmp_path / "img", n=1, size=72) / "img0.png").crop((0, 0, 72, 56)).resize(
        (18, 14), Image.BICUBIC).save(src)
    assert main(["upscale", str(src), "--flow", "hcflow-small", "--prior", "hcflow-small-lp", "--threads", "1",
                 "-o", str(tmp_path / "cli.png")]) == 0
    assert main(["upscale", str(src), "--prior", "hcflow-small-lp", "--threads", "1", "-o", str(tmp_path / "named.png")]) == 0
    cli = np.asarray(Image.open(tmp_path / "cli.png"))
    assert cli.shape == (56, 72, 3) and (tmp_path / "named.png").read_bytes() == (tmp_path / "cli.png").read_bytes()
    flow, prior = load_flow("hcflow-small"), load_prior("hcflow-small-lp")
    assert flow.kind == "hcflow" and prior.config.latent_channels == flow.latent_channels and prior.config.scale_head
    lr = torch.from_numpy(np.asarray(Image.open(src))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = SuperResolver(flow, prior)(lr)
    assert out.all_finite
    api = (out.images[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.abs(api.astype(int) - cli.astype(int)).max() <= 1  # the CLI's PNG is the same image
    tau0 = SuperResolver(flow)(lr, strategy=TemperatureSampling(0.0)).images
    assert (out.images - tau0).abs().mean() > 1e-3  # the prior's latent is not the flow's mean
    # v2: draws around the prior are correlated over both latent parts (configs/cpu/hcflow-small-lp-residual.yaml)
    assert prior.config.residual_reach == 1 and prior.residual.channels == (21, 6)
    with torch.no_grad():
        draw = SuperResolver(flow, prior)(lr, strategy=LearnedPrior(prior, variation=0.5, seed=0))
    assert draw.all_finite and (draw.images - out.images).abs().mean() > 1e-3
