"""SuperResolver.bits_per_dim: the density of the 8-bit HR under each latent strategy, checked
against SRFlow's own NLL convention (official numbers), a brute-force change of variables
(the full Jacobian of the decoder) on tiny flows, and the strategies' Gaussians by hand."""
import json
import math

import pytest
import torch

from flowsr_lp import load_flow
from flowsr_lp.pipeline import LearnedPrior, SuperResolver, TemperatureSampling
from flowsr_lp.priors import LINFLatentModule, LINFPriorConfig, SRFlowLatentModule, SRFlowPriorConfig

from conftest import REFERENCE, load_vectors, need
from helpers import tiny_linf, tiny_srflow


def _images(hr_hw, lr_hw, seed=0):
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(1, 3, *lr_hw, generator=g)
    up = torch.nn.functional.interpolate(lr, hr_hw, mode="bicubic", align_corners=False)
    hr = (up + 0.05 * torch.randn(1, 3, *hr_hw, generator=g)).clamp(0, 1)
    return (hr * 255).round() / 255, lr


def brute_force_bpd(flow, lr, hr, sigma=1.0, mean=None):
    """-log2 p(hr) per sub-pixel + 8 from the decoder's full Jacobian: log p(x) = log q(z) -
    log |det dx/dz|, z = encode(x); q = N(mean, sigma^2) over the flattened latent."""
    ctx = flow.condition(lr, tuple(hr.shape[-2:]))
    latent, _ = flow.encode(hr, ctx)
    sizes = [z.numel() for z in latent]
    flat = torch.cat([z.flatten() for z in latent]).detach()

    def dec(v):
        parts, i = [], 0
        for z, n in zip(latent, sizes):
            parts.append(v[i:i + n].view_as(z))
            i += n
        return flow.decode(tuple(parts), ctx).flatten()

    jac = torch.autograd.functional.jacobian(dec, flat).double()
    assert jac.shape[0] == jac.shape[1] == hr.numel()
    mu = torch.zeros_like(flat, dtype=torch.float64) if mean is None else mean.double()
    log_q = (-0.5 * ((flat.double() - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum()
    log_p = log_q - torch.linalg.slogdet(jac)[1]
    return ((-log_p / hr.numel() + math.log(256)) / math.log(2)).item()


@pytest.mark.parametrize("family", ["srflow", "linf-patch", "linf"])
@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_bits_per_dim_is_the_change_of_variables(family, tau):
    flow = {"srflow": lambda: tiny_srflow(), "linf-patch": lambda: tiny_linf(3), "linf": lambda: tiny_linf(1)}[family]()
    hr, lr = _images((8, 8), (2, 2)) if family == "srflow" else _images((6, 6), (3, 3))
    got = SuperResolver(flow).bits_per_dim(hr, lr, TemperatureSampling(tau))
    assert got.dtype == torch.float64 and got.shape == (1,)
    want = brute_force_bpd(flow, lr, hr, sigma=tau)
    assert got.item() == pytest.approx(want, rel=1e-4)
    assert got.item() != pytest.approx(want + 1 / hr.numel(), rel=1e-5)  # the test can see a 1-nat slip


def test_bits_per_dim_matches_srflow_nll_convention():
    """SRFlow trains on the NLL in bits per HR pixel (official vectors): bits/dim is that over
    three sub-pixels plus the 8 bits of the quantisation bin."""
    opt = json.loads(need(REFERENCE / "srflow-4x-nb4-k2.opt.json").read_text())
    flow = load_flow(REFERENCE / "srflow-4x-nb4-k2.pth", taps=opt["network_G"]["flow"]["stackRRDB"]["blocks"])
    v = load_vectors("srflow-4x-nb4-k2")
    got = SuperResolver(flow).bits_per_dim(v["hr"], v["lr"])
    want = v["nll_gt"].double() / 3 + 8
    torch.testing.assert_close(got, want.reshape(got.shape), rtol=1e-6, atol=0)


def test_bits_per_dim_agrees_with_encode():
    """An independent computation from Flow.encode (LINF adds ln 2 per sub-pixel for its
    [-1, 1] range), within 1e-6 relative, for a batch of two."""
    flow = tiny_linf(3)
    hr, lr = _images((12, 15), (4, 5))
    hr2, lr2 = _images((12, 15), (4, 5), seed=1)
    hr, lr = torch.cat([hr, hr2]), torch.cat([lr, lr2])
    got = SuperResolver(flow).bits_per_dim(hr, lr)
    with torch.no_grad():
        _, log_p = flow.encode(hr, flow.condition(lr, (12, 15)))
    d = 3 * 12 * 15
    want = (-(log_p.double() + d * math.log(2)) / d + math.log(256)) / math.log(2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_padded_borders_are_left_out():
    """SRFlow at an odd LR side and LINF's overhanging patches: the value is that of the
    largest region modelled without padding (the same as cropping the inputs there)."""
    flow = tiny_srflow()
    hr, lr = _images((12, 8), (3, 2))
    r = SuperResolver(flow)
    torch.testing.assert_close(r.bits_per_dim(hr, lr), r.bits_per_dim(hr[..., :8, :], lr[..., :2, :]))
    flow = tiny_linf(3)
    hr, lr = _images((8, 7), (3, 3))
    got = SuperResolver(flow).bits_per_dim(hr, lr)
    with torch.no_grad():
        ctx = flow.condition(lr, (8, 7), window=(0, 0, 6, 6))
        _, log_p = flow.encode(hr[..., :6, :6], ctx)
    want = (-(log_p.double() + 108 * math.log(2)) / 108 + math.log(256)) / math.log(2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_tau_zero_has_no_density():
    with pytest.raises(ValueError, match="point mass"):
        SuperResolver(tiny_linf(3)).bits_per_dim(*_images((6, 6), (3, 3)), TemperatureSampling(0.0))


@pytest.mark.parametrize("head", [False, True])
def test_learned_prior_density(head):
    """N(mu, (t sigma)^2) around the module's prediction, by brute force on a tiny flow."""
    flow = tiny_linf(3)
    torch.manual_seed(3)
    prior = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=1, scale_head=head)).eval()
    if head:
        with torch.no_grad():
            prior.scale_head.body[-1].bias.uniform_(-0.5, 0.5)
    hr, lr = _images((6, 6), (3, 3))
    r = SuperResolver(flow, prior)
    with torch.no_grad():
        ctx = flow.condition(lr, (6, 6))
        mu, log_sigma = LearnedPrior(prior).distribution(flow, lr, ctx)
    sigma = torch.exp(log_sigma[0]).flatten().double() if head else 1.0
    for t in (0.0, 0.5):
        got = r.bits_per_dim(hr, lr, LearnedPrior(prior, variation=t)).item()
        s = sigma * (t or 1.0)
        want = _brute_force_with_scale(flow, lr, hr, mu[0].flatten(), s)
        assert got == pytest.approx(want, rel=1e-4)


def test_bits_per_dim_each_is_one_encoding_for_every_strategy():
    flow = tiny_linf(3)
    torch.manual_seed(3)
    prior = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=1, scale_head=True)).eval()
    hr, lr = _images((6, 6), (3, 3))
    r = SuperResolver(flow, prior)
    strategies = [TemperatureSampling(0.7), LearnedPrior(prior), LearnedPrior(prior, variation=0.5), None]
    got = r.bits_per_dim_each(hr, lr, [s or TemperatureSampling(1.0) for s in strategies])
    for g, s in zip(got, strategies):
        torch.testing.assert_close(g, r.bits_per_dim(hr, lr, s), rtol=1e-12, atol=0)
    assert len({round(g.item(), 9) for g in got}) == 4
    with pytest.raises(ValueError, match="point mass"):
        r.bits_per_dim_each(hr, lr, [TemperatureSampling(0.5), TemperatureSampling(0.0)])


def test_bits_per_dim_each_runs_the_module_once_for_its_variations():
    flow = tiny_linf(3)
    torch.manual_seed(3)
    prior = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=1, scale_head=True)).eval()
    other = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=1, scale_head=True)).eval()
    calls = []
    for m in (prior, other):  # the generator runs once per prediction (per latent part, untiled)
        m.generate = (lambda f, m=m: lambda *a, **k: calls.append(m) or f(*a, **k))(m.generate)
    hr, lr = _images((6, 6), (3, 3))
    r = SuperResolver(flow, prior)
    strategies = [LearnedPrior(prior), LearnedPrior(prior, variation=0.5), LearnedPrior(prior, variation=1.0),
                  LearnedPrior(other), LearnedPrior(prior, tile=128)]
    got = r.bits_per_dim_each(hr, lr, strategies)
    # one prediction per (module, tiling): prior, other, prior with another tiling
    assert [id(m) for m in calls] == [id(prior), id(other), id(prior)]
    for g, s in zip(got, strategies):
        torch.testing.assert_close(g, r.bits_per_dim(hr, lr, s), rtol=1e-12, atol=0)


def _brute_force_with_scale(flow, lr, hr, mu, sigma):
    if isinstance(sigma, float):
        return brute_force_bpd(flow, lr, hr, sigma, mu)
    # per-element sigma: shift the log q by hand around the unit-scale computation
    base = brute_force_bpd(flow, lr, hr, 1.0, mu)
    with torch.no_grad():
        z = flow.encode(hr, flow.condition(lr, tuple(hr.shape[-2:])))[0][0].flatten().double()
    d = (z - mu.double())
    delta = (-0.5 * (d / sigma) ** 2 - torch.log(sigma) + 0.5 * d ** 2).sum().item()
    return base - delta / hr.numel() / math.log(2)


def test_srflow_learned_prior_density_uses_every_part():
    flow = tiny_srflow()
    prior = SRFlowLatentModule(SRFlowPriorConfig(dim=8, depth=1, latent_channels=flow.latent_channels,
                                                 scale_head=True)).eval()
    with torch.no_grad():
        for i in range(len(flow.latent_channels)):
            getattr(prior, f"scale_head{i}").body[-1].bias.fill_(-0.3 * (i + 1))
    hr, lr = _images((16, 16), (4, 4))
    r = SuperResolver(flow, prior)
    a = r.bits_per_dim(hr, lr, LearnedPrior(prior))
    b = r.bits_per_dim(hr, lr, LearnedPrior(prior, variation=2.0))
    # doubling every sigma changes log q by sum(-log 2 - 0.5 d^2 (1/4 - 1)/sigma^2): not zero
    assert torch.isfinite(a).all() and torch.isfinite(b).all() and not torch.allclose(a, b)
