"""The one inference path: input kinds, strategies, the result's finite mask, the old API."""
import numpy as np
import pytest
import torch
from PIL import Image

from flowsr_lp.errors import UsageError
from flowsr_lp.flows.srflow import SRFlow
from flowsr_lp.pipeline import LearnedPrior, SuperResolver, TemperatureSampling, as_lr_batch

from helpers import explode_at_tau, tiny_linf, tiny_linf_prior, tiny_srflow


@pytest.fixture(scope="module")
def resolver():
    return SuperResolver(tiny_linf(3))


def test_tensor_pil_and_numpy_inputs_give_the_same_image_in_their_own_kind(resolver):
    u8 = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    t = torch.from_numpy(u8).permute(2, 0, 1).float() / 255
    s = TemperatureSampling(0.5, seed=3)
    ref = resolver(t[None], scale=2, strategy=s).output
    assert ref.shape == (1, 3, 20, 24)
    assert resolver(t, scale=2, strategy=s).output.shape == (3, 20, 24)  # rank kept
    pil = resolver(Image.fromarray(u8), scale=2, strategy=s).output
    arr = resolver(u8, scale=2, strategy=s).output
    flt = resolver(u8.astype(np.float32) / 255, scale=2, strategy=s).output
    assert isinstance(pil, Image.Image) and pil.size == (24, 20)
    assert arr.dtype == np.uint8 and arr.shape == (20, 24, 3) and flt.dtype == np.float32
    ref_u8 = (ref[0] * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(pil), ref_u8) and np.array_equal(arr, ref_u8)
    np.testing.assert_allclose(flt, ref[0].permute(1, 2, 0).numpy(), atol=1e-6)


def test_16_bit_pil_images_keep_their_range():
    """A 16-bit PIL image reads as the 16-bit file does (convert("RGB") alone saturates it)."""
    a16 = np.array([[1000, 40000], [0, 65535]], dtype=np.uint16)
    t, kind = as_lr_batch(Image.fromarray(a16))
    assert kind == "pil" and t.shape == (1, 3, 2, 2)
    torch.testing.assert_close(t[0, 0], torch.from_numpy(a16.astype(np.float32) / 65535))
    assert torch.equal(t[0, 0], t[0, 2])
    u8 = np.array([[0, 128], [255, 7]], dtype=np.uint8)  # 8-bit modes are unchanged
    assert torch.equal(as_lr_batch(Image.fromarray(u8))[0][0, 1] * 255, torch.from_numpy(u8).float())


def test_bad_inputs_are_usage_errors(resolver):
    with pytest.raises(UsageError, match="3 x H x W"):
        resolver(torch.rand(1, 4, 8, 8), scale=2)
    with pytest.raises(UsageError, match="H x W x 3"):
        as_lr_batch(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(UsageError, match="unsupported image type"):
        resolver([[0.5]], scale=2)
    with pytest.raises(UsageError, match="scale or an output size"):
        resolver(torch.rand(3, 8, 8))


def test_one_seed_is_one_unit_noise_at_every_temperature(resolver):
    prepared = resolver.prepare(torch.rand(1, 3, 8, 8), scale=2)
    ctx = prepared.ctx
    z_half = TemperatureSampling(0.5, seed=7).latent(resolver.flow, prepared.lr, ctx, 2.0)
    z_one = TemperatureSampling(1.0, seed=7).latent(resolver.flow, prepared.lr, ctx, 2.0)
    z_other = TemperatureSampling(1.0, seed=8).latent(resolver.flow, prepared.lr, ctx, 2.0)
    torch.testing.assert_close(z_half[0], 0.5 * z_one[0])
    assert not torch.equal(z_one[0], z_other[0])
    a = resolver.generate(prepared, TemperatureSampling(0.5, seed=7)).images
    assert torch.equal(a, resolver.generate(prepared, TemperatureSampling(0.5, seed=7)).images)
    assert TemperatureSampling(0).deterministic and not TemperatureSampling(0.1).deterministic


def test_result_reports_non_finite_images_per_item(monkeypatch):
    explode_at_tau(monkeypatch, SRFlow)
    res = SuperResolver(tiny_srflow(4))
    lr = torch.rand(2, 3, 6, 6)
    ok = res(lr, strategy=TemperatureSampling(0.5, seed=0))  # fixed-scale flow: its own scale
    bad = res(lr, strategy=TemperatureSampling(10, seed=0))
    assert ok.images.shape == (2, 3, 24, 24) and ok.finite.tolist() == [True, True] and ok.all_finite
    assert bad.finite.tolist() == [False, False] and not bad.all_finite
    assert torch.isfinite(bad.clamped()).all() and bad.clamped().max() <= 1


def test_learned_prior_strategy_is_the_default_with_a_prior_and_matches_the_old_call():
    flow, prior = tiny_linf(3), tiny_linf_prior()
    res = SuperResolver(flow, prior)
    assert isinstance(res.strategy, LearnedPrior) and res.strategy.deterministic
    lr = torch.rand(1, 3, 8, 8)
    new = res(lr, scale=3).images
    torch.testing.assert_close(res.upscale(lr, scale=3), new, rtol=0, atol=0)
    tiled = SuperResolver(flow, prior, prior_max_pixels=16, prior_tile=16, prior_overlap=4).strategy
    assert (tiled.max_pixels, tiled.tile, tiled.overlap) == (16, 16, 4)
    sampled = res(lr, scale=3, strategy=TemperatureSampling(0.8, seed=0)).images
    assert not torch.allclose(sampled, new)


def test_old_upscale_keyword_api():
    res = SuperResolver(tiny_linf(3))
    lr = torch.rand(3, 8, 8)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = res.upscale(lr, scale=2, tau=0.5, generator=g())
    b = res.upscale(lr, (16, 16), tau=0.5, generator=g())
    assert a.shape == (1, 3, 16, 16) and torch.equal(a, b)
    with pytest.raises(ValueError):
        res.upscale(lr)
    with pytest.raises(UsageError, match="do not belong together"):
        SuperResolver(tiny_srflow(4), tiny_linf_prior())
