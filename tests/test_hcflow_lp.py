"""HCFlow's learned prior: the multi-part UNet latent module (`srflow-lp` family, one branch
per split-off part at its own resolution, with the LR branch) on an HCFlow, through the one
pipeline, trained by `train-prior` through the frozen flow."""
import math

import pytest
import torch

from flowsr_lp import load_prior, save_flow
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
