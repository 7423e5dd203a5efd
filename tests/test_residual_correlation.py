"""The residual's correlation around the learned prior (nets/residual_correlation.py): an exact
correlated Gaussian for samples around the prior and their density, fitted by `stage:
correlate`."""
import pytest
import torch

from flowsr_lp import load_prior, save_prior
from flowsr_lp.cli import main
from flowsr_lp.nets.residual_correlation import ResidualCorrelation, causal_offsets, sum_moments
from flowsr_lp.nets.scale_head import with_config
from flowsr_lp.pipeline import LearnedPrior, SuperResolver, batched, gaussian_log_density
from flowsr_lp.priors import LINFLatentModule, LINFPriorConfig, SRFlowLatentModule, SRFlowPriorConfig
from flowsr_lp.train.config import ConfigError, load_config

from helpers import tiny_linf, training_fixtures, write_recipe

images, flow_file = training_fixtures(n=4, size=72)


def random_correlation(reach=1, channels=(2,), seed=0, strength=0.15):
    """Weights small enough for a stable recursion, a lower-triangular L with a positive diagonal."""
    g = torch.Generator().manual_seed(seed)
    rc = ResidualCorrelation(reach, channels)
    for i, c in enumerate(channels):
        getattr(rc, f"weight{i}").copy_(strength * torch.randn(len(rc.offsets[i]), c, c, generator=g))
        chol = torch.tril(0.3 * torch.randn(c, c, generator=g), -1) + torch.diag(0.5 + torch.rand(c, generator=g))
        getattr(rc, f"cholesky{i}").copy_(chol)
    return rc


def test_offsets_are_causal_in_raster_order():
    assert causal_offsets(1) == [(-1, -1), (-1, 0), (-1, 1), (0, -1)]
    assert len(causal_offsets(2)) == 12
    assert all(dy < 0 or (dy == 0 and dx < 0) for dy, dx in causal_offsets(3))
    for bad in (0, -1, True, (1,), (1, -1), (1.0, 0)):  # one positive integer, or one >= 0 per part
        with pytest.raises(ValueError, match="reach"):
            ResidualCorrelation(bad, (3, 4))
    rc = ResidualCorrelation((2, 0), (3, 4))
    assert rc.reach == (2, 0) and rc.weight0.shape == (12, 3, 3) and rc.weight1.shape == (0, 4, 4)


def test_a_new_correlation_is_independence():
    rc = ResidualCorrelation(2, (3, 5))
    es = [torch.randn(2, 3, 5, 7), torch.randn(2, 5, 3, 4)]
    for a, b in zip(rc.color(es), es):
        assert torch.equal(a, b)
    us, log_det = rc.whiten(es)
    assert all(torch.equal(a, b.double()) for a, b in zip(us, es)) and torch.equal(log_det, torch.zeros(2).double())


@pytest.mark.parametrize("reach", [1, 2, (1, 0), (0, 2)])
def test_color_and_whiten_are_inverse(reach):
    rc = random_correlation(reach, (2, 3))
    es = [torch.randn(2, 2, 6, 9, dtype=torch.float64), torch.randn(2, 3, 4, 3, dtype=torch.float64)]
    us = rc.color(es)
    assert not torch.allclose(us[0], es[0])
    back, _ = rc.whiten(us)
    for a, b in zip(back, es):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # linear, and each batch item on its own
    torch.testing.assert_close(rc.color([0.3 * e for e in es])[0], 0.3 * us[0])
    torch.testing.assert_close(rc.color([e[1:] for e in es])[1], us[1][1:])


@pytest.mark.parametrize("reach", [1, (0,)])
def test_the_density_is_the_exact_correlated_gaussian(reach):
    """Against the dense multivariate normal whose covariance is M M^T, M the coloring map;
    reach 0 correlates each position's channels alone."""
    rc = random_correlation(reach, (2,), seed=3)
    c, h, w = 2, 3, 4
    n = c * h * w
    basis = torch.eye(n, dtype=torch.float64).view(n, c, h, w)
    m = rc.color([basis])[0].view(n, n).T  # column k: the coloring of unit vector k
    block = (m.view(c, h, w, c, h, w).permute(1, 2, 0, 4, 5, 3).reshape(h * w, c, h * w, c) != 0).any((1, 3))
    assert block.any(1).all() and (block.sum().item() > h * w) == (reach != (0,))  # positions mix iff reach > 0
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(1, c, h, w, generator=g, dtype=torch.float64)
    log_sigma = 0.3 * torch.randn(1, c, h, w, generator=g, dtype=torch.float64)
    z = torch.randn(1, c, h, w, generator=g, dtype=torch.float64)
    t = 0.7
    scale = (t * log_sigma.exp()).flatten()
    cov = scale[:, None] * (m @ m.T) * scale[None, :]
    dense = torch.distributions.MultivariateNormal(mu.flatten(), covariance_matrix=cov).log_prob(z.flatten())
    mine = gaussian_log_density((z,), (mu,), (log_sigma,), t, rc)
    torch.testing.assert_close(mine, dense[None], rtol=1e-10, atol=1e-8)
    # without the correlation: the independent Gaussian, as before
    indep = torch.distributions.Normal(mu, t * log_sigma.exp()).log_prob(z).sum()
    torch.testing.assert_close(gaussian_log_density((z,), (mu,), (log_sigma,), t), indep[None])


@pytest.mark.parametrize("reach", [1, (1, 0)])
def test_the_fit_recovers_the_process_that_drew_the_residuals(reach):
    channels = (2,) if reach == 1 else (2, 3)
    truth = random_correlation(reach, channels, seed=5, strength=0.2)
    g = torch.Generator().manual_seed(2)
    us = truth.color([torch.randn(4, c, 128, 128, generator=g, dtype=torch.float64) for c in channels])
    fitted = ResidualCorrelation(reach, channels)
    total = None
    for k in range(4):  # moments add up over images
        total = sum_moments(total, fitted.moments([u[k:k + 1] for u in us]))
    fitted.fit_(total)
    for i in range(len(channels)):
        torch.testing.assert_close(getattr(fitted, f"weight{i}"), getattr(truth, f"weight{i}"), atol=0.03, rtol=0)
        torch.testing.assert_close(getattr(fitted, f"cholesky{i}"), getattr(truth, f"cholesky{i}"), atol=0.03, rtol=0)


def linf_pair(reach=1):
    flow = tiny_linf(3)
    torch.manual_seed(0)
    prior = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, scale_head=True))
    torch.nn.init.normal_(prior.scale_head.body[-1].weight, std=0.3)
    grown = with_config(prior, residual_reach=reach).eval()
    rc = random_correlation(reach, (27,), seed=7, strength=0.02)
    grown.residual.load_state_dict(rc.state_dict())
    return flow, prior.eval(), grown


@pytest.mark.usefixtures("no_grad")
def test_a_module_with_correlation_samples_correlated_noise_the_same_tiled_or_not():
    flow, plain, prior = linf_pair()
    lr = torch.rand(1, 3, 16, 14, generator=torch.Generator().manual_seed(0))
    r = SuperResolver(flow, prior)
    # t = 0 is the prior itself, bit for bit as without the correlation
    assert torch.equal(r(lr, scale=3).images, SuperResolver(flow, plain)(lr, scale=3).images)
    ctx = flow.condition(lr, (48, 42))
    s = LearnedPrior(prior, variation=0.6, seed=3)
    z = s.latent(flow, lr, ctx, 3.0)
    mu, log_sigma = s.distribution(flow, lr, ctx)
    eps = flow.sample_latent(ctx, 0.6, torch.Generator().manual_seed(3))
    torch.testing.assert_close(z[0], mu[0] + torch.exp(log_sigma[0]) * prior.residual.color(eps)[0])
    independent = LearnedPrior(plain, variation=0.6, seed=3).latent(flow, lr, ctx, 3.0)
    assert (z[0] - independent[0]).abs().max() > 1e-3
    whole = r(lr, scale=3, strategy=s).images
    tiled = r.generate(r.prepare(lr, scale=3, tile=4), LearnedPrior(prior, variation=0.6, seed=3)).images
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    # one seed per batch item: an item gets what it gets alone
    two = torch.cat([lr, lr.flip(-1)])
    both = r(two, scale=3, strategy=batched(LearnedPrior(prior, variation=0.6, seed=3), 2)).images
    torch.testing.assert_close(both[:1], whole, atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("no_grad")
def test_one_draw_in_a_million_is_independent_and_the_density_is_the_mixture(monkeypatch):
    import flowsr_lp.pipeline as pipeline
    from flowsr_lp.nets.residual_correlation import INDEPENDENT_WEIGHT

    assert INDEPENDENT_WEIGHT == 2.0 ** -20
    flow, plain, prior = linf_pair()
    lr = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    ctx = flow.condition(lr, (36, 30))
    z = flow.encode(torch.rand(2, 3, 36, 30, generator=torch.Generator().manual_seed(2)), ctx)[0]
    s = LearnedPrior(prior, variation=0.5)
    mu, log_sigma = s.distribution(flow, lr, ctx)
    corr = gaussian_log_density(z, mu, log_sigma, 0.5, prior.residual)
    ind = gaussian_log_density(z, mu, log_sigma, 0.5)
    mix = torch.logaddexp(corr + torch.log1p(torch.tensor(-INDEPENDENT_WEIGHT, dtype=torch.float64)),
                          ind + torch.log(torch.tensor(INDEPENDENT_WEIGHT, dtype=torch.float64)))
    torch.testing.assert_close(s.log_density(flow, lr, ctx, 3.0, z), mix)
    assert torch.all(s.log_density(flow, lr, ctx, 3.0, z) >= torch.maximum(corr, ind) - 20 * 0.6932)
    # the choice per batch item, drawn from each item's generator after its noise
    monkeypatch.setattr(pipeline, "INDEPENDENT_WEIGHT", 0.5)
    seeds = [k for k in range(40)]
    chosen = LearnedPrior(prior, variation=0.5, seed=seeds).latent(flow, torch.cat([lr[:1]] * 40), flow.condition(
        torch.cat([lr[:1]] * 40), (36, 30)), 3.0)[0]
    ind_z = LearnedPrior(plain, variation=0.5, seed=seeds).latent(flow, torch.cat([lr[:1]] * 40), flow.condition(
        torch.cat([lr[:1]] * 40), (36, 30)), 3.0)[0]
    same = [(chosen[k] - ind_z[k]).abs().max().item() < 1e-6 for k in range(40)]
    for k in range(40):
        g = torch.Generator().manual_seed(k)
        flow.sample_latent(flow.condition(lr[:1], (36, 30)), 1.0, g)
        assert same[k] == (torch.rand((), generator=g).item() < 0.5)
    assert 5 < sum(same) < 35


@pytest.mark.usefixtures("no_grad")
def test_bits_per_dim_use_the_correlated_density():
    flow, plain, prior = linf_pair()
    hr = torch.rand(1, 3, 36, 30, generator=torch.Generator().manual_seed(4))
    lr = torch.nn.functional.interpolate(hr, size=(12, 10), mode="area")
    r = SuperResolver(flow, prior)
    got = r.bits_per_dim(hr, lr, LearnedPrior(prior, variation=0.8))
    ind = SuperResolver(flow, plain).bits_per_dim(hr, lr, LearnedPrior(plain, variation=0.8))
    assert torch.isfinite(got).all() and (got - ind).abs().max() > 1e-4
    # a grown correlation (independence) changes nothing
    fresh = with_config(plain, residual_reach=2).eval()
    torch.testing.assert_close(SuperResolver(flow, fresh).bits_per_dim(hr, lr, LearnedPrior(fresh, variation=0.8)),
                               ind, rtol=0, atol=1e-9)


def test_configs_keep_it_off_and_srflow_has_one_per_part(tmp_path):
    assert LINFPriorConfig().residual_reach == 0 and SRFlowPriorConfig().residual_reach == 0
    assert not hasattr(LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2)), "residual")
    m = SRFlowLatentModule(SRFlowPriorConfig(dim=8, depth=1, latent_channels=(6, 24), residual_reach=2))
    assert m.residual.channels == (6, 24) and m.residual.weight1.shape == (12, 24, 24)
    m.residual.load_state_dict(random_correlation(2, (6, 24), seed=2).state_dict())
    back = load_prior(save_prior(m, tmp_path / "m.safetensors"))
    assert torch.equal(back.residual.weight1, m.residual.weight1) and back.config.residual_reach == 2
    # one reach per part survives the file (JSON lists back into the tuple)
    per_part = SRFlowLatentModule(SRFlowPriorConfig(dim=8, depth=1, latent_channels=(6, 24), residual_reach=(1, 0)))
    per_part.residual.load_state_dict(random_correlation((1, 0), (6, 24), seed=4).state_dict())
    back = load_prior(save_prior(per_part, tmp_path / "p.safetensors"))
    assert back.config.residual_reach == (1, 0) and back.residual.reach == (1, 0)
    assert back.residual.weight1.shape == (0, 24, 24) and torch.equal(back.residual.cholesky1, per_part.residual.cholesky1)
    # a LINF-LP module's specialists share the module's correlation
    spec = with_config(with_config(LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2)),
                                   scale_stats=(2.0, 4.0), residual_reach=1), specialists=(4.0,))
    assert hasattr(spec, "residual") and not hasattr(spec.specialists[0], "residual")


def recipe(tmp_path, images, flow_file, prior, out="corr"):
    return write_recipe(tmp_path / f"{out}.yaml", task="prior", stage="correlate", flow={"checkpoint": flow_file},
                        prior={"correlation_images": 3, "correlation_scale": 3, **prior},
                        data={"train": {"folders": [images]}, "val": {"folders": [images], "scale": 3, "max_images": 1}},
                        run={"out": str(tmp_path / out)})


def test_the_correlate_stage_fits_the_module_and_changes_nothing_else(tmp_path, images, flow_file):
    torch.manual_seed(0)
    start = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, scale_head=True))
    start_file = save_prior(start, tmp_path / "start.safetensors")
    spec = {"checkpoint": str(start_file), "config": {"residual_reach": 1}}
    assert main(["train-prior", recipe(tmp_path, images, flow_file, spec)]) == 0
    out = load_prior(tmp_path / "corr" / "model.safetensors")
    assert out.config.residual_reach == 1
    assert not torch.equal(out.residual.weight0, torch.zeros_like(out.residual.weight0))
    assert torch.all(torch.diagonal(out.residual.cholesky0) > 0)
    for name, v in start.state_dict().items():
        assert torch.equal(out.state_dict()[name], v), name
    assert (tmp_path / "corr" / "val.csv").is_file()
    # refused up front, nothing written: a module without the correlation; a bad image count
    assert main(["train-prior", recipe(tmp_path, images, flow_file, {"checkpoint": str(start_file)}, "bad")]) != 0
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="correlation_images"):
        load_config(recipe(tmp_path, images, flow_file, {**spec, "correlation_images": 0}, "bad2"))


def test_scale_correlations_interpolate_their_fits_in_log_scale():
    from flowsr_lp.nets.residual_correlation import ScaleCorrelations

    sc = ScaleCorrelations((2.0, 4.0), 1, (3,))
    for k, seed in enumerate((1, 2)):
        sc.per_scale[k].load_state_dict(random_correlation(1, (3,), seed=seed).state_dict())
    assert sc.at(2.0) is sc.per_scale[0] and sc.at(4.0) is sc.per_scale[1]  # a fitted scale: its fit itself
    assert sc.at(1.5) is sc.per_scale[0] and sc.at(8.0) is sc.per_scale[1]  # clamped to the ends
    mid = sc.at(2.0 * 2 ** 0.25)  # a quarter of the way in log scale
    for name in ("weight0", "cholesky0"):
        torch.testing.assert_close(getattr(mid, name),
                                   0.75 * getattr(sc.per_scale[0], name) + 0.25 * getattr(sc.per_scale[1], name))
    es = [torch.randn(1, 3, 5, 6, dtype=torch.float64)]
    back, _ = mid.whiten(mid.color(es))  # still an exact, invertible model
    torch.testing.assert_close(back[0], es[0], rtol=0, atol=1e-10)
    assert sc.fitted() == [(2.0, sc.per_scale[0]), (4.0, sc.per_scale[1])]
    with pytest.raises(ValueError, match="residual_scales"):
        ScaleCorrelations((4.0, 2.0), 1, (3,))
    with pytest.raises(ValueError, match="residual_reach"):
        LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, residual_scales=(2.0, 4.0)))


def scaled_pair():
    """A LINF-LP module with one correlation at x3 and another at x4."""
    flow, plain, _ = linf_pair()
    prior = with_config(plain, residual_reach=1, residual_scales=[3, 4]).eval()
    assert prior.config.residual_scales == (3, 4)
    for k, seed in enumerate((7, 8)):
        prior.residual.per_scale[k].load_state_dict(random_correlation(1, (27,), seed=seed, strength=0.02).state_dict())
    return flow, plain, prior


@pytest.mark.usefixtures("no_grad")
def test_samples_and_density_use_the_correlation_at_the_image_scale(tmp_path, monkeypatch):
    flow, plain, prior = scaled_pair()
    back = load_prior(save_prior(prior, tmp_path / "m.safetensors"))
    assert back.config.residual_scales == (3, 4) and torch.equal(back.residual.per_scale[1].weight0,
                                                                   prior.residual.per_scale[1].weight0)
    lr = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    for size, scale, fit in (((36, 30), 3.0, 0), ((48, 40), 4.0, 1)):
        ctx = flow.condition(lr, size)
        s = LearnedPrior(prior, variation=0.6, seed=3)
        mu, log_sigma = s.distribution(flow, lr, ctx)
        eps = flow.sample_latent(ctx, 0.6, torch.Generator().manual_seed(3))
        torch.testing.assert_close(s.latent(flow, lr, ctx, scale)[0],
                                   mu[0] + torch.exp(log_sigma[0]) * prior.residual.per_scale[fit].color(eps)[0])
    # the density at a scale between two fits: that of their interpolation (a latent drawn there,
    # so the correlated part of the mixture dominates)
    ctx = flow.condition(lr, (37, 31))
    s = LearnedPrior(prior, variation=0.8)
    z = LearnedPrior(prior, variation=0.8, seed=5).latent(flow, lr, ctx, 3.1)
    mu, log_sigma = s.distribution(flow, lr, ctx)
    between = gaussian_log_density(z, mu, log_sigma, 0.8, prior.residual.at(3.1))
    torch.testing.assert_close(s.log_density(flow, lr, ctx, 3.1, z), between, rtol=1e-12, atol=1e-6)
    assert (s.log_density(flow, lr, ctx, 3.0, z) - between).abs().max() > 1e-3
    # bits/dim pass the image's scale, as its upscale does: a 37 x 31 HR over a 12 x 10 LR is x3.1,
    # though the density's region is cropped to whole 3x3 patches (36 x 30, x3)
    seen = []
    monkeypatch.setattr(LearnedPrior, "log_density", lambda self, flow, lr, ctx, scale, latent, memo=None:
                        seen.append(scale) or torch.zeros(len(lr), dtype=torch.float64))
    hr = torch.rand(1, 3, 37, 31, generator=torch.Generator().manual_seed(4))
    SuperResolver(flow, prior).bits_per_dim(hr, lr, LearnedPrior(prior, variation=0.8))
    assert seen == [pytest.approx(3.1)]


def test_the_correlate_stage_fits_each_scale_and_replaces_an_older_correlation(tmp_path, images, flow_file):
    torch.manual_seed(0)
    start = with_config(LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, scale_head=True)),
                        residual_reach=1)
    start.residual.load_state_dict(random_correlation(1, (27,), seed=9, strength=0.02).state_dict())
    start_file = save_prior(start, tmp_path / "start.safetensors")
    spec = {"checkpoint": str(start_file), "config": {"residual_reach": 1, "residual_scales": [2, 3]},
            "correlation_images": 2}
    path = write_recipe(tmp_path / "scales.yaml", task="prior", stage="correlate", flow={"checkpoint": flow_file},
                        prior=spec, data={"train": {"folders": [images]},
                                          "val": {"folders": [images], "scale": 3, "max_images": 1}},
                        run={"out": str(tmp_path / "scales")})
    assert main(["train-prior", path]) == 0
    out = load_prior(tmp_path / "scales" / "model.safetensors")
    assert out.config.residual_scales == (2, 3) and "residual.weight0" not in out.state_dict()
    at2, at3 = out.residual.per_scale
    assert not torch.allclose(at2.cholesky0, at3.cholesky0)  # each fitted at its own scale
    # the x3 fit is the one a single-scale stage at x3 makes
    single = recipe(tmp_path, images, flow_file, {"checkpoint": str(start_file), "config": {"residual_reach": 1},
                                                  "correlation_images": 2}, "single")
    assert main(["train-prior", single]) == 0
    torch.testing.assert_close(load_prior(tmp_path / "single" / "model.safetensors").residual.cholesky0, at3.cholesky0,
                               rtol=0, atol=0)
    for name, v in start.state_dict().items():  # everything but the correlation is the start's
        assert name.startswith("residual.") or torch.equal(out.state_dict()[name], v), name
    with pytest.raises(ConfigError, match="correlation_scale"):
        load_config(recipe(tmp_path, images, flow_file, spec, "bad"))
