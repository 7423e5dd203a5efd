"""Scale specialists for LINF-LP (nets/scale_specialists.py): copies of the module that serve
the images near one scale each, blended with the module by scale; grown, calibrated and
assembled from separately trained modules (train/start.py)."""
import math

import pytest
import torch

from flowsr_lp import load_flow, load_prior, save_prior
from flowsr_lp.cli import main
from flowsr_lp.nets.scale_head import with_config
from flowsr_lp.nets.scale_specialists import check_specialists, specialist_weights
from flowsr_lp.nets.scale_stats import batch_norms
from flowsr_lp.priors import LINFLatentModule, LINFPriorConfig
from flowsr_lp.priors.tiling import predict_distribution
from flowsr_lp.train.calibration import calibrate_scale_stats
from flowsr_lp.train.config import ConfigError, load_config

from helpers import training_fixtures, write_recipe

images, flow_file = training_fixtures(n=8, size=96)
STATS = (1.0, 2.0, 4.0, 8.0)


def stats_module(seed=0):
    """A small LINF-LP UNet with a scale head and per-scale statistics that differ by scale."""
    torch.manual_seed(seed)
    prior = with_config(LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, scale_head=True)),
                        scale_stats=STATS)
    with torch.no_grad():
        st = prior.scale_stats
        st.means.normal_(0, 0.5), st.vars.uniform_(0.5, 2.0), st.counts.fill_(1.0)
    return prior.eval()


def perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def alone(prior, k=None):
    """The module (k None) or its specialist k as a module without specialists."""
    own = LINFLatentModule(LINFPriorConfig.from_dict({**prior.config.to_dict(), "specialists": ()}))
    src = prior if k is None else prior.specialists[k]
    own.load_state_dict({n: v for n, v in src.state_dict().items() if not n.startswith("specialists.")})
    return own.train(prior.training)


def inputs(scale, seed=1, lr_side=12, batch=2):
    """z0 and an LR image whose sizes read `scale` (HR = 3 x the latent map)."""
    g = torch.Generator().manual_seed(seed)
    side = round(lr_side * scale / 3)
    return torch.randn(batch, 27, side, side, generator=g), torch.rand(batch, 3, lr_side, lr_side, generator=g)


def read_scale(z0, lr):
    return 3 * z0.shape[-1] / lr.shape[-1]


def test_weights_fall_linearly_in_log_scale_and_reaches_never_overlap():
    assert specialist_weights(4.0, (4.0,), 1.5) == [(0, 1.0)]
    assert specialist_weights(4.0 * (1 + 1e-12), (4.0,), 1.5) == [(0, 1.0)]  # an anchor read with rounding
    for s in (1.0, 2.0, 4.0 / 1.5, 6.0, 8.0):
        assert specialist_weights(s, (4.0,), 1.5) == [(None, 1.0)], s
    (base, wb), (k, wk) = specialist_weights(5.0, (4.0,), 1.5)
    assert base is None and k == 0 and wk == pytest.approx(1 - math.log(5 / 4) / math.log(1.5)) and wb + wk == 1
    assert specialist_weights(3.0, (1.5, 4.0), 1.5)[1] == (1, pytest.approx(1 - math.log(4 / 3) / math.log(1.5)))
    check_specialists((2.0, 4.5), 1.5)  # 2.25 apart: they touch at 3
    for anchors, reach, match in (((2.0, 4.0), 1.5, "overlap"), ((4.0, 2.0), 1.5, "increasing"),
                                  ((0.0,), 1.5, "increasing"), ((4.0,), 1.0, "above 1")):
        with pytest.raises(ValueError, match=match):
            check_specialists(anchors, reach)
    with pytest.raises(ValueError, match="need scale_stats"):
        LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, specialists=(4.0,)))
    assert not LINFPriorConfig().specialists  # off in every released module


@pytest.mark.usefixtures("no_grad")
def test_a_grown_specialist_is_a_copy_so_the_output_is_bit_for_bit_unchanged():
    prior = stats_module()
    grown = with_config(prior, specialists=(4.0,)).eval()
    assert all(torch.equal(a, b) for a, b in zip(alone(grown, 0).state_dict().values(), prior.state_dict().values()))
    for s in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0):
        z0, lr = inputs(s)
        (mu, ls), (mu2, ls2) = prior.distribution((z0,), lr), grown.distribution((z0,), lr)
        assert torch.equal(mu[0], mu2[0]) and torch.equal(ls[0], ls2[0]), s
    with pytest.raises(ValueError, match="cannot change"):  # dropping them would drop trained weights
        with_config(grown, specialists=())


@pytest.mark.usefixtures("no_grad")
def test_the_specialist_serves_its_scale_alone_and_blends_with_the_module_within_its_reach():
    grown = with_config(stats_module(), specialists=(4.0,)).eval()
    perturb(grown.specialists[0], 3)
    base, spec = alone(grown).eval(), alone(grown, 0).eval()
    calls = []
    grown.inc.register_forward_hook(lambda *a: calls.append("module"))
    grown.specialists[0].inc.register_forward_hook(lambda *a: calls.append("specialist"))
    for s in (2.0, 4.0, 5.0, 7.0, 3.5):
        z0, lr = inputs(s)
        calls.clear()
        mu, ls = grown.distribution((z0,), lr)
        weights = dict(specialist_weights(read_scale(z0, lr), (4.0,), 1.5))
        (mb, lb), (msp, lsp) = base.distribution((z0,), lr), spec.distribution((z0,), lr)
        if weights == {None: 1.0}:
            assert calls == ["module"] and torch.equal(mu[0], mb[0]) and torch.equal(ls[0], lb[0]), s
        elif weights == {0: 1.0}:
            assert calls == ["specialist"] and torch.equal(mu[0], msp[0]) and torch.equal(ls[0], lsp[0]), s
        else:
            w = weights[0]
            assert sorted(calls) == ["module", "specialist"] and 0 < w < 1, s
            torch.testing.assert_close(mu[0], (1 - w) * mb[0] + w * msp[0])
            torch.testing.assert_close(ls[0], (1 - w) * lb[0] + w * lsp[0])
            assert not torch.allclose(mu[0], mb[0], atol=1e-3) and not torch.allclose(mu[0], msp[0], atol=1e-3)


@pytest.mark.usefixtures("no_grad")
def test_tiles_give_the_whole_map_and_a_saved_module_loads_as_it_was(tmp_path):
    grown = with_config(stats_module(), specialists=(4.0,)).eval()
    perturb(grown.specialists[0], 4)
    path = save_prior(grown, tmp_path / "spec.safetensors")
    loaded = load_prior(path)
    assert loaded.config.specialists == (4.0,) and loaded.config.specialist_reach == 1.5
    tiles = dict(max_pixels=20 * 20, tile=16, overlap=8, margin=4)  # a 24 x 24 tile alone would read x2.4
    base, spec = alone(grown).eval(), alone(grown, 0).eval()
    for s in (4.0, 5.0):  # the specialist alone, and the blend
        z0, lr = inputs(s, lr_side=30, batch=1)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(predict_distribution(grown, (z0,), lr),
                                                           predict_distribution(loaded, (z0,), lr)))
        w = dict(specialist_weights(read_scale(z0, lr), (4.0,), 1.5)).get(0)
        tiled = predict_distribution(loaded, (z0,), lr, **tiles)
        for i, (b, sp) in enumerate(zip(predict_distribution(base, (z0,), lr, **tiles),
                                        predict_distribution(spec, (z0,), lr, **tiles))):
            torch.testing.assert_close(tiled[i][0], torch.lerp(b[0], sp[0], w), rtol=1e-5, atol=1e-5)


def test_training_reaches_the_modules_that_serve_the_batch_in_proportion_to_their_weights():
    grown = with_config(stats_module(), specialists=(4.0,)).train()
    for s in (4.0, 5.0, 2.0):
        grown.zero_grad()
        z0, lr = inputs(s)
        grown.distribution((z0,), lr)[0][0].square().mean().backward()
        g_base, g_spec = grown.outc.conv.weight.grad, grown.specialists[0].outc.conv.weight.grad
        weights = dict(specialist_weights(read_scale(z0, lr), (4.0,), 1.5))
        assert (g_base is not None and g_base.abs().sum() > 0) == (None in weights), s
        assert (g_spec is not None and g_spec.abs().sum() > 0) == (0 in weights), s


def test_calibration_measures_every_module_at_every_scale_as_it_would_alone(images, flow_file):
    flow = load_flow(flow_file)
    grown = with_config(stats_module(), specialists=(3.0,))
    perturb(grown.specialists[0], 5)
    base = alone(grown)
    calibrate_scale_stats(flow, grown, [images], batches=2, batch_size=2, hr_crop=72)
    calibrate_scale_stats(flow, base, [images], batches=2, batch_size=2, hr_crop=72)
    for st in (grown.scale_stats, grown.specialists[0].scale_stats):  # two batches at each scale, its reach or not
        torch.testing.assert_close(st.counts, torch.full_like(st.counts, 2.0))
    assert torch.equal(grown.scale_stats.means, base.scale_stats.means)  # the module's own, unchanged by blending
    assert not torch.allclose(grown.specialists[0].scale_stats.means, base.scale_stats.means)


def recipe(tmp_path, flow_file, images, prior, out="cal"):
    return write_recipe(tmp_path / f"{out}.yaml", task="prior", stage="calibrate", flow={"checkpoint": flow_file},
                        prior={"calibration_batches": 1, **prior},
                        data={"train": {"folders": [images]}, "crop": {"kind": "linf-lp", "hr_size": 72},
                              "val": {"folders": [images], "scale": 3, "max_images": 1}},
                        optim={"batch_size": 2}, run={"out": str(tmp_path / out)})


def test_a_recipe_assembles_specialists_from_modules_trained_for_their_scale(tmp_path, images, flow_file):
    start = save_prior(stats_module(), tmp_path / "start.safetensors")
    trained = stats_module()
    perturb(trained, 6)
    x3 = save_prior(trained, tmp_path / "x3.safetensors")
    spec = {"checkpoint": str(start), "config": {"specialists": [3.0], "specialist_reach": 1.2},
            "specialists_from": [str(x3)]}
    assert main(["train-prior", recipe(tmp_path, flow_file, images, spec)]) == 0
    out = load_prior(tmp_path / "cal" / "model.safetensors")
    assert out.config.specialists == (3.0,) and out.config.specialist_reach == 1.2
    assert out.specialists[0].config == trained.config  # a member is a plain module, the reach its default
    mine = out.specialists[0].state_dict()
    for name, v in trained.state_dict().items():  # its weights and layers' statistics; its scales' measured again
        assert name.startswith("scale_stats.") or torch.equal(mine[name], v), name
    assert not torch.allclose(mine["scale_stats.means"], trained.scale_stats.means)
    assert torch.equal(out.inc.double_conv[0].weight, load_prior(start).inc.double_conv[0].weight)
    # refused up front, with nothing written: a count that does not match, a module of another kind
    plain = save_prior(LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2)), tmp_path / "plain.st")
    for i, bad in enumerate(([str(x3), str(x3)], [str(plain)])):
        assert main(["train-prior", recipe(tmp_path, flow_file, images, {**spec, "specialists_from": bad},
                                           f"bad{i}")]) != 0
        assert not (tmp_path / f"bad{i}").exists()
    with pytest.raises(ConfigError, match="specialists_from"):
        load_config(recipe(tmp_path, flow_file, images, {**spec, "specialists_from": str(x3)}))


@pytest.mark.slow
def test_training_over_a_range_of_scales_trains_the_module_and_its_specialist(tmp_path, images, flow_file):
    """Crops from x1 to x3 with a specialist at x3: batches near x1 reach the module alone, those
    near x3 the specialist alone, so neither may be frozen by the first batch's probe."""
    start = save_prior(stats_module(), tmp_path / "start.safetensors")
    cfg = dict(task="prior", flow={"checkpoint": flow_file},
               prior={"checkpoint": str(start), "config": {"specialists": [3.0]}},
               data={"train": {"folders": [images], "repeat": 4},
                     "crop": {"kind": "linf-lp", "lr_size": 18, "window": None, "scale_min": 1, "scale_max": 3}},
               optim={"batch_size": 2, "iterations": 12, "lr": 2e-3}, loss={"perceptual": "none"},
               run={"out": str(tmp_path / "run"), "log_every": 4, "ckpt_every": 100, "seed": 3})
    assert main(["train-prior", write_recipe(tmp_path / "run.yaml", **cfg)]) == 0
    out, before = load_prior(tmp_path / "run" / "model.safetensors"), load_prior(start)
    assert not torch.equal(out.outc.conv.weight, before.outc.conv.weight)
    assert not torch.equal(out.specialists[0].outc.conv.weight, before.outc.conv.weight)
    assert not torch.equal(out.specialists[0].outc.conv.weight, out.outc.conv.weight)


@pytest.mark.usefixtures("no_grad")
def test_specialists_can_ship_in_float16_and_load_back_as_float32(tmp_path):
    from flowsr_lp.checkpoints import read_checkpoint

    grown = with_config(stats_module(), specialists=(4.0,)).eval()
    perturb(grown.specialists[0], 7)
    full = save_prior(grown, tmp_path / "full.safetensors")
    half = save_prior(grown, tmp_path / "half.safetensors", float16=("specialists.",))
    assert half.stat().st_size < 0.8 * full.stat().st_size
    assert read_checkpoint(half)[1]["stored_float16"] == ["specialists."]
    loaded, params = load_prior(half).state_dict(), dict(grown.named_parameters())
    for k, v in grown.state_dict().items():
        assert loaded[k].dtype == v.dtype, k
        rounded = k in params and k.startswith("specialists.")  # buffers and the module stay exact
        assert torch.equal(loaded[k], v.half().to(v.dtype) if rounded else v), k
    assert not torch.equal(loaded["specialists.0.outc.conv.weight"], grown.specialists[0].outc.conv.weight)
