"""BatchNorm statistics per scale for LINF-LP (nets/scale_stats.py) and the calibrate stage."""
import math

import pytest
import torch

from flowsr_lp import load_prior
from flowsr_lp.cli import main
from flowsr_lp.nets.scale_head import with_config
from flowsr_lp.nets.scale_stats import ScaleStats, batch_norms
from flowsr_lp.priors import LINFLatentModule, LINFPriorConfig
from flowsr_lp.priors.tiling import predict_latent
from flowsr_lp.train.calibration import calibrate_scale_stats
from flowsr_lp.train.config import ConfigError, load_config

from helpers import read_csv, tiny_linf, training_fixtures, write_recipe

images, flow_file = training_fixtures(n=8, size=96)
SCALES = (1.0, 2.0, 4.0)


def trained_module(seed=0):
    """A small LINF-LP UNet whose BatchNorm layers have non-trivial running statistics."""
    torch.manual_seed(seed)
    prior = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, scale_head=True))
    with torch.no_grad():
        for m in batch_norms(prior):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.normal_(1, 0.2)
            m.bias.normal_(0, 0.2)
    return prior.eval()


def inputs(scale, seed=1):
    """z0 and an LR image whose sizes say `scale` exactly (HR = 3 x the latent map)."""
    g = torch.Generator().manual_seed(seed)
    lr_side = 12
    side = round(lr_side * scale / 3)
    return torch.randn(2, 27, side, side, generator=g), torch.rand(2, 3, lr_side, lr_side, generator=g)


def fill(prior, layers_stats):
    """Set every scale's statistics: layers_stats[k] = [(mean, var) per layer]."""
    st = prior.scale_stats
    for k, per_layer in enumerate(layers_stats):
        off = 0
        for i, (mean, var) in enumerate(per_layer):
            st.means[k, off : off + len(mean)] = mean
            st.vars[k, off : off + len(mean)] = var
            st.counts[k, i] = 1.0
            off += len(mean)


def random_stats(prior, seed):
    g = torch.Generator().manual_seed(seed)
    return [[(torch.randn(m.num_features, generator=g), torch.rand(m.num_features, generator=g) + 0.5)
             for m in batch_norms(prior)] for _ in SCALES]


def with_running_stats(prior, per_layer):
    """A copy without scale_stats whose layers' own statistics are `per_layer`."""
    plain = LINFLatentModule(LINFPriorConfig(**{**prior.config.to_dict(), "scale_stats": ()}))
    plain.load_state_dict({k: v for k, v in prior.state_dict().items() if not k.startswith("scale_stats")})
    with torch.no_grad():
        for m, (mean, var) in zip(batch_norms(plain), per_layer):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    return plain.eval()


@pytest.mark.usefixtures("no_grad")
def test_a_grown_module_computes_bit_for_bit_as_before_until_it_records_statistics():
    prior = trained_module()
    grown = with_config(prior, scale_stats=SCALES).eval()
    for scale in (1.0, 1.5, 3.0, 4.0, 6.0):  # bin scales, between them, beyond the last
        z0, lr = inputs(scale)
        a, b = prior.distribution((z0,), lr), grown.distribution((z0,), lr)
        assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[1][0], b[1][0])
    assert not LINFPriorConfig().scale_stats  # off in every released module


@pytest.mark.usefixtures("no_grad")
def test_each_scale_uses_its_own_statistics_and_scales_between_interpolate_in_log_scale():
    prior = with_config(trained_module(), scale_stats=SCALES).eval()
    stats = random_stats(prior, 5)
    fill(prior, stats)
    for k, scale in enumerate(SCALES):
        z0, lr = inputs(scale)
        ref = with_running_stats(prior, stats[k])((z0,), lr)[0]
        torch.testing.assert_close(prior((z0,), lr)[0], ref, rtol=1e-5, atol=1e-5)
    z0, lr = inputs(2 * math.sqrt(2))  # the geometric middle of 2 and 4 (HR 3 x 11 over LR 12: 2.75)
    s = 3 * z0.shape[-1] / lr.shape[-1]
    a = (math.log(s) - math.log(2)) / math.log(2)
    mixed = [((1 - a) * m2 + a * m4, (1 - a) * v2 + a * v4) for (m2, v2), (m4, v4) in zip(stats[1], stats[2])]
    ref = with_running_stats(prior, mixed)((z0,), lr)[0]
    torch.testing.assert_close(prior((z0,), lr)[0], ref, rtol=1e-5, atol=1e-5)
    # the scale is read from the sizes: the wrong scale's statistics give another output
    assert not torch.allclose(prior((z0,), lr)[0], with_running_stats(prior, stats[0])((z0,), lr)[0], atol=1e-3)


@pytest.mark.usefixtures("no_grad")
def test_training_mode_is_unchanged_and_records_the_batch_statistics_at_its_scale():
    plain = trained_module()
    prior = with_config(plain, scale_stats=SCALES)
    plain.train(), prior.train()
    for m in batch_norms(plain) + batch_norms(prior):
        m.momentum = None  # plain averages: one batch's statistics exactly
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, x: seen.append(x[0].detach().clone())) for m in batch_norms(prior)]
    z0, lr = inputs(4.0)
    assert torch.equal(plain((z0,), lr)[0], prior((z0,), lr)[0])  # training computes as without
    for h in hooks:
        h.remove()
    st, off = prior.scale_stats, 0
    for i, x in enumerate(seen):
        c = x.shape[1]
        xs = x.transpose(0, 1).flatten(1)
        torch.testing.assert_close(st.means[2, off : off + c], xs.mean(1))
        torch.testing.assert_close(st.vars[2, off : off + c], xs.var(1))
        off += c
    assert st.counts[2].eq(1).all() and st.counts[:2].eq(0).all()  # only scale 4 recorded


@pytest.mark.usefixtures("no_grad")
def test_every_tile_uses_the_statistics_of_the_whole_image_scale():
    prior = with_config(trained_module(), scale_stats=SCALES).eval()
    stats = random_stats(prior, 9)
    fill(prior, stats)
    g = torch.Generator().manual_seed(3)
    z0, lr = torch.randn(1, 27, 40, 40, generator=g), torch.rand(1, 3, 30, 30, generator=g)  # x4
    plain = with_running_stats(prior, stats[2])
    for tiles in ({}, dict(max_pixels=20 * 20, tile=16, overlap=8, margin=2)):  # a 20 x 20 tile alone reads x2.7
        torch.testing.assert_close(predict_latent(prior, (z0,), lr, **tiles)[0],
                                   predict_latent(plain, (z0,), lr, **tiles)[0], rtol=1e-5, atol=1e-5)


def test_scale_stats_are_checked():
    with pytest.raises(ValueError, match="increasing positive"):
        ScaleStats((2.0, 1.0), [4])
    with pytest.raises(ValueError, match="unet"):
        LINFLatentModule(LINFPriorConfig(generator="edsr-baseline-latent", dim=8, n_resblocks=1, scale_stats=(1.0,)))
    with pytest.raises(ValueError, match="scale_affine needs scale_stats"):
        LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, scale_affine=True))


@pytest.mark.usefixtures("no_grad")
def test_a_grown_scale_affine_starts_as_the_identity_and_then_acts_at_its_own_scales_only():
    stats = with_config(trained_module(), scale_stats=SCALES).eval()
    fill(stats, random_stats(stats, 3))
    grown = with_config(stats, scale_affine=True).eval()
    cases = {s: inputs(s) for s in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)}
    before = {s: stats.distribution((z0,), lr)[0][0] for s, (z0, lr) in cases.items()}
    for s, (z0, lr) in cases.items():
        assert torch.equal(grown.distribution((z0,), lr)[0][0], before[s])
    grown.scale_affine.shifts[0].normal_(0, 0.3)  # x1 only: x2 and above keep their output
    grown.scale_affine.gains[0].normal_(0, 0.3)
    for s, (z0, lr) in cases.items():
        changed = not torch.equal(grown.distribution((z0,), lr)[0][0], before[s])
        assert changed == (s < 2.0), s


def test_scale_affine_learns_at_the_two_scales_around_the_batch_in_proportion_to_their_weights():
    grown = with_config(with_config(trained_module(), scale_stats=SCALES), scale_affine=True).train()
    z0, lr = inputs(3.0)  # between x2 and x4: log-weights 0.415 / 0.585
    mu = grown.distribution((z0,), lr)[0][0]
    mu.square().mean().backward()
    g = grown.scale_affine.shifts.grad
    assert g[0].abs().max() == 0 and g[1].abs().max() > 0 and g[2].abs().max() > 0
    a = math.log(3.0 / 2.0) / math.log(2.0)
    assert torch.allclose(g[2] * (1 - a), g[1] * a, rtol=1e-4, atol=1e-9)


def test_calibration_fills_each_scale_and_leaves_the_layers_and_weights_alone(images, flow_file):
    from flowsr_lp import load_flow

    flow = load_flow(flow_file)
    prior = with_config(trained_module(), scale_stats=(1.5, 3.0))
    before = {k: v.clone() for k, v in prior.state_dict().items() if not k.startswith("scale_stats")}
    calibrate_scale_stats(flow, prior, [images], batches=2, batch_size=2, hr_crop=72)
    assert not prior.training
    assert all(torch.equal(before[k], v) for k, v in prior.state_dict().items() if k in before)
    # two batches per scale, each recorded at its own scale only (sizes that read exactly)
    assert prior.scale_stats.counts.eq(2).all()
    assert not torch.allclose(prior.scale_stats.means[0], prior.scale_stats.means[1])
    first = prior.scale_stats.means.clone()
    calibrate_scale_stats(flow, prior, [images], batches=2, batch_size=2, hr_crop=72)  # measured again, not averaged
    assert prior.scale_stats.counts.eq(2).all() and torch.equal(prior.scale_stats.means, first)
    with pytest.raises(FileNotFoundError, match="no image of at least"):
        calibrate_scale_stats(flow, prior, [images], batches=2, batch_size=2, hr_crop=600)


def calibrate_recipe(tmp_path, images, flow_file, prior_file, **prior_spec):
    return write_recipe(tmp_path / "cal.yaml", task="prior", stage="calibrate", flow={"checkpoint": flow_file},
                        prior={"checkpoint": prior_file, **prior_spec},
                        data={"train": {"folders": [images]}, "crop": {"kind": "linf-lp", "hr_size": 72},
                              "val": {"folders": [images], "scale": 3, "max_images": 2}},
                        optim={"batch_size": 2}, run={"out": str(tmp_path / "cal")})


def test_calibrate_stage_writes_a_calibrated_module_with_its_record(tmp_path, images, flow_file):
    from flowsr_lp import save_prior
    from flowsr_lp.checkpoints import read_checkpoint

    start = save_prior(trained_module(), tmp_path / "start.safetensors")
    recipe = calibrate_recipe(tmp_path, images, flow_file, str(start), config={"scale_stats": [1.5, 3.0]},
                              calibration_batches=2)
    assert main(["train-prior", recipe]) == 0
    out = tmp_path / "cal" / "model.safetensors"
    prior = load_prior(out)
    assert prior.config.scale_stats == (1.5, 3.0) and prior.scale_stats.counts.eq(2).all()
    record = read_checkpoint(out)[1]["training"]
    assert record["steps"] == 0 and "BatchNorm statistics at scales 1.5, 3" in record["perceptual"]
    assert float(read_csv(tmp_path / "cal" / "val.csv")[0]["val_psnr"]) > 0
    # a module without the option, and recipes that are not a prior's, are refused up front
    bad = calibrate_recipe(tmp_path, images, flow_file, str(start), calibration_batches=0)
    with pytest.raises(ConfigError, match="calibration_batches"):
        load_config(bad)
    (tmp_path / "cal").rename(tmp_path / "cal-done")
    plain = calibrate_recipe(tmp_path, images, flow_file, str(start))
    assert main(["train-prior", plain]) != 0
    assert not (tmp_path / "cal" / "model.safetensors").exists()
