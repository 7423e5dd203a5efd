"""The scale head and sampling around the learned prior: LearnedPrior(prior, variation=t)."""
import logging

import pytest
import torch

from flowsr_lp.pipeline import LearnedPrior, SuperResolver, TemperatureSampling, batched
from flowsr_lp.priors import LINFLatentModule, LINFPriorConfig, SRFlowLatentModule, SRFlowPriorConfig
from flowsr_lp.nets.scale_head import LOG_SIGMA_BOUND, gaussian_nll, with_config, with_scale_head
from flowsr_lp.priors.tiling import predict_distribution

from helpers import tiny_linf, tiny_srflow

pytestmark = pytest.mark.usefixtures("no_grad")


def linf_pair(head=True, seed=0):
    flow = tiny_linf(3)
    torch.manual_seed(seed)
    prior = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, scale_head=head)).eval()
    if head:
        torch.nn.init.normal_(prior.scale_head.body[-1].weight, std=0.3)
    return flow, prior


def lr_image(h=12, w=10, seed=0):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_head_is_off_by_default_and_starts_at_unit_scale():
    assert not LINFPriorConfig().scale_head and not SRFlowPriorConfig().scale_head
    torch.manual_seed(0)
    prior = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, scale_head=True)).eval()
    flow = tiny_linf(3)
    ctx = flow.condition(lr_image(), (36, 30))
    mu, log_sigma = LearnedPrior(prior).distribution(flow, lr_image(), ctx)
    assert log_sigma[0].shape == mu[0].shape and torch.count_nonzero(log_sigma[0]) == 0
    with pytest.raises(ValueError, match="unet"):
        LINFLatentModule(LINFPriorConfig(generator="edsr-baseline-latent", dim=8, n_resblocks=1, scale_head=True))


def test_variation_zero_is_the_prior_bit_for_bit():
    flow, prior = linf_pair()
    r = SuperResolver(flow, prior)
    a = r(lr_image(), scale=3).images
    b = r(lr_image(), scale=3, strategy=LearnedPrior(prior, variation=0.0, seed=5)).images
    assert torch.equal(a, b)
    # the head does not change mu: the same module without it gives the same image
    plain = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2)).eval()
    plain.load_state_dict({k: v for k, v in prior.state_dict().items() if not k.startswith("scale_head")})
    assert torch.equal(SuperResolver(flow, plain)(lr_image(), scale=3).images, a)


def test_samples_are_mu_plus_t_sigma_eps():
    flow, prior = linf_pair()
    lr = lr_image()
    ctx = flow.condition(lr, (36, 30))
    s = LearnedPrior(prior, variation=0.7, seed=3)
    z = s.latent(flow, lr, ctx, 3.0)
    mu, log_sigma = s.distribution(flow, lr, ctx)
    eps = flow.sample_latent(ctx, 1.0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(z[0], mu[0] + 0.7 * torch.exp(log_sigma[0]) * eps[0])
    assert not torch.allclose(torch.exp(log_sigma[0]), torch.ones(()))  # a per-element scale, not 1
    # the same unit noise as TemperatureSampling with that seed
    torch.testing.assert_close(TemperatureSampling(1.0, seed=3).latent(flow, lr, ctx, 3.0)[0], eps[0])


def test_seeds_per_batch_item_as_when_alone():
    flow, prior = linf_pair()
    lr = torch.cat([lr_image(seed=1), lr_image(seed=2)])
    r = SuperResolver(flow, prior)
    both = r(lr, scale=3, strategy=batched(LearnedPrior(prior, variation=0.5, seed=4), 2)).images
    alone = r(lr[1:], scale=3, strategy=LearnedPrior(prior, variation=0.5, seed=4)).images
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)
    other = r(lr[1:], scale=3, strategy=LearnedPrior(prior, variation=0.5, seed=5)).images
    assert (other - alone).abs().max() > 1e-3


@pytest.mark.parametrize("tile", ["off", 4])
def test_draws_from_one_prepared_input_share_one_prediction_and_match_fresh_inputs(tile):
    flow, prior = linf_pair()
    r = SuperResolver(flow, prior)
    lr = lr_image(16, 14)
    calls = []
    generate = prior.generate
    prior.generate = lambda *a, **k: calls.append(1) or generate(*a, **k)
    prepared = r.prepare(lr, scale=3, tile=tile)
    strategies = [LearnedPrior(prior, variation=t, seed=k) for t, k in ((0.0, 0), (0.5, 1), (0.5, 2), (1.0, 1))]
    shared = [r.generate(prepared, s).images for s in strategies + strategies[:1]]
    once = len(calls)
    fresh = [r.generate(r.prepare(lr, scale=3, tile=tile), s).images for s in strategies]
    assert len(calls) == once * (1 + len(strategies))  # the shared input ran the module for one draw only
    for a, b in zip(shared, fresh + fresh[:1]):
        assert torch.equal(a, b)  # and the prior's own latent came back intact after being decoded
    assert (shared[1] - shared[2]).abs().max() > 1e-3


def test_no_head_samples_a_fixed_temperature_and_says_so_once(caplog):
    flow, prior = linf_pair(head=False)
    lr = lr_image()
    ctx = flow.condition(lr, (36, 30))
    import flowsr_lp.pipeline as pipeline
    pipeline._fixed_variation_noted = False
    with caplog.at_level(logging.WARNING, logger="flowsr_lp.pipeline"):
        z = LearnedPrior(prior, variation=0.4, seed=1).latent(flow, lr, ctx, 3.0)
        LearnedPrior(prior, variation=0.4, seed=2).latent(flow, lr, ctx, 3.0)
    assert sum("no scale head" in r.message for r in caplog.records) == 1
    mu, sig = LearnedPrior(prior).distribution(flow, lr, ctx)
    assert sig is None
    eps = flow.sample_latent(ctx, 1.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(z[0], mu[0] + 0.4 * eps[0])


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), 11.0])
def test_variation_must_be_finite_in_range(bad):
    _, prior = linf_pair()
    with pytest.raises(ValueError, match="variation"):
        LearnedPrior(prior, variation=bad)


def test_distribution_tiled_matches_whole():
    flow, prior = linf_pair()
    lr = lr_image(24, 24)
    ctx = flow.condition(lr, (72, 72))
    z0 = flow.initial_prior(lr, ctx, "paper")
    mu, ls = predict_distribution(prior, z0, lr)
    mu_t, ls_t = predict_distribution(prior, z0, lr, max_pixels=0, tile=16, overlap=4, margin=8)
    assert ls_t is not None
    torch.testing.assert_close(mu_t[0], mu[0], atol=2e-2, rtol=0)
    torch.testing.assert_close(ls_t[0], ls[0], atol=2e-2, rtol=0)


def test_srflow_module_has_a_head_per_part():
    flow = tiny_srflow()
    torch.manual_seed(0)
    prior = SRFlowLatentModule(SRFlowPriorConfig(dim=8, depth=1, latent_channels=flow.latent_channels,
                                                 scale_head=True)).eval()
    lr = lr_image(4, 4)
    ctx = flow.condition(lr, (16, 16))
    mu, ls = LearnedPrior(prior).distribution(flow, lr, ctx)
    assert [m.shape for m in mu] == [tuple(s) for s in flow.latent_shapes(ctx)] == [x.shape for x in ls]
    r = SuperResolver(flow, prior)
    assert torch.equal(r(lr).images, r(lr, strategy=LearnedPrior(prior, variation=0)).images)
    # bit for bit the module without its heads (mu keeps its memory layout through the split)
    plain = SRFlowLatentModule(SRFlowPriorConfig(dim=8, depth=1, latent_channels=flow.latent_channels)).eval()
    plain.load_state_dict({k: v for k, v in prior.state_dict().items() if not k.startswith("scale_head")})
    assert torch.equal(SuperResolver(flow, plain)(lr).images, r(lr).images)


def test_grown_head_keeps_every_other_weight():
    _, prior = linf_pair(head=False)
    grown = with_scale_head(prior).eval()
    assert grown.config.scale_head and not prior.config.scale_head
    for k, v in prior.state_dict().items():
        assert torch.equal(grown.state_dict()[k], v), k
    assert any(k.startswith("scale_head") for k in grown.state_dict())


def test_config_changes_keep_every_weight_or_are_refused():
    _, prior = linf_pair(head=True)
    up = with_config(prior, lr_input="upsampled").eval()
    assert up.config.lr_input == "upsampled" and prior.config.lr_input == "lr"
    assert prior.state_dict().keys() == up.state_dict().keys()
    assert all(torch.equal(up.state_dict()[k], v) for k, v in prior.state_dict().items())
    with pytest.raises(ValueError, match="reshape"):
        with_config(prior, dim=16)
    with pytest.raises(ValueError, match="drop"):
        with_config(prior, inputs="prior")  # would lose the trained LR branch


def test_grown_refine_unet_starts_at_the_module_output_and_then_learns():
    _, prior = linf_pair(head=True)
    grown = with_config(prior, refine=True).eval()
    assert any(k.startswith("refine_") for k in grown.state_dict()) and not prior.config.refine
    z0, lr = torch.randn(1, 27, 8, 8, generator=torch.Generator().manual_seed(1)), lr_image(6, 6)
    before = prior.distribution((z0,), lr)
    after = grown.distribution((z0,), lr)
    assert torch.equal(after[0][0], before[0][0]) and torch.equal(after[1][0], before[1][0])
    # the zero output conv still passes gradients to itself, so the new UNet learns from step one
    grown.train()
    with torch.enable_grad():
        grown.distribution((z0,), lr)[0][0].square().mean().backward()
    assert grown.refine_outc.conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unet"):
        LINFLatentModule(LINFPriorConfig(generator="edsr-baseline-latent", dim=8, n_resblocks=1, refine=True))


def test_upsampled_lr_input_gives_the_lr_branch_one_patch_per_latent_position():
    _, prior = linf_pair(head=False)
    up = with_config(prior, lr_input="upsampled").eval()
    lr, size = lr_image(7, 5), (9, 7)  # a latent map of 9 x 7 positions (x ~3.9 at 3 x 3 patches)
    own = up.lr_features(lr, size)
    big = torch.nn.functional.interpolate(lr, (27, 21), mode="bicubic", align_corners=False)
    assert own.shape == (1, prior.config.dim // 2, *size)
    assert torch.equal(own, up.lr_proj((big - 0.5) / 0.5))  # no resize after the conv: it is at the map's size
    # upstream's branch reads the LR itself: its features (3 x 2 here) are resized up afterwards
    plain = prior.lr_features(lr, size)
    assert plain.shape == own.shape and not torch.allclose(plain, own)
    with pytest.raises(ValueError, match="lr_input"):
        LINFLatentModule(LINFPriorConfig(dim=8, depth=1, lr_input="hr"))


def test_gaussian_nll_trains_sigma_only():
    z, mu = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4, requires_grad=True)
    with torch.enable_grad():
        ls = torch.zeros(2, 3, 4, 4, requires_grad=True)
        nll = gaussian_nll(z, mu, ls)
        nll.backward()
    assert mu.grad is None and ls.grad is not None
    # minimised where sigma^2 equals the mean square residual
    r2 = ((z - mu) ** 2).mean()
    best = torch.log(r2) / 2
    vals = [gaussian_nll(z, mu, torch.full_like(z, best + d)).item() for d in (-0.1, 0.0, 0.1)]
    assert vals[1] < vals[0] and vals[1] < vals[2]
    assert LOG_SIGMA_BOUND > 0


def test_a_latent_of_the_wrong_channels_is_a_package_error():
    from flowsr_lp.errors import UsageError
    from flowsr_lp.priors.tiling import predict_latent

    _, prior = linf_pair(head=False)
    lr = lr_image()
    for bad in [(torch.zeros(1, 12, 4, 4),), torch.zeros(1, 27, 4, 4), (torch.zeros(27, 4, 4),)]:
        with pytest.raises(UsageError, match="27"):
            prior(bad, lr)
        with pytest.raises(UsageError, match="27"):
            predict_latent(prior, bad, lr)
    flow = tiny_srflow()
    sp = SRFlowLatentModule(SRFlowPriorConfig(dim=8, depth=1, latent_channels=flow.latent_channels)).eval()
    with pytest.raises(UsageError, match="2 latent part"):
        sp((torch.zeros(1, flow.latent_channels[0], 4, 4),), lr)
