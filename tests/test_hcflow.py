"""HCFlow behind the Flow interface: exact inverses at odd sizes, log-dets against autograd
Jacobians, the initial prior, the project format and the released-layout loader."""
import pytest
import torch
import torch.nn.functional as F

from flowsr_lp import CheckpointError, load_flow, save_flow
from flowsr_lp.checkpoints import read_checkpoint
from flowsr_lp.families import registry
from flowsr_lp.flows.hcflow import RELEASED, AtanAffineCoupling, HCFlow, HCFlowConfig, HCFlowStep


def tiny_hcflow(scale=4, seed=0, perturb=0.05):
    torch.manual_seed(seed)
    L = 2 if scale == 4 else 3
    flow = HCFlow(HCFlowConfig(scale=scale, K=3, after_split=(1,) * L, hidden_channels=8, split_hidden_channels=8,
                               rrdb_nb=(1, 1), nf=8, gc=4))
    with torch.no_grad():  # zero convs would make the couplings identities
        for p in flow.parameters():
            p.add_(perturb * torch.randn_like(p))
    return flow.eval()


@pytest.mark.parametrize("scale", [4, 8])
def test_decode_inverts_encode_at_odd_sizes(scale, no_grad):
    flow = tiny_hcflow(scale)
    g = torch.Generator().manual_seed(1)
    lr = torch.rand(2, 3, 5, 7, generator=g)
    ctx = flow.condition(lr)
    assert ctx.out_size == (5 * scale, 7 * scale)
    z = flow.sample_latent(ctx, 0.7, g)
    assert [tuple(t.shape) for t in z] == flow.latent_shapes(ctx)
    assert [t.shape[1] for t in z] == list(flow.latent_channels)
    sr = flow.decode(z, ctx)
    assert sr.shape == (2, 3, 5 * scale, 7 * scale) and torch.isfinite(sr).all()
    # the reverse pass starts from the LR, so encoding its output finds the LR again
    # (the Dirac term at its peak) and the same latent
    latent, fake_lr, _ = flow.forward_pass(sr)
    torch.testing.assert_close(fake_lr, lr, atol=1e-5, rtol=1e-5)
    for a, b in zip(latent, z):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # and from any HR: encode, then decode from its own fake LR
    hr = torch.rand(2, 3, 5 * scale, 7 * scale, generator=g)
    latent, fake_lr, _ = flow.forward_pass(hr)
    torch.testing.assert_close(flow.decode(latent, flow.condition(fake_lr)), hr, atol=1e-5, rtol=1e-5)
    assert (fake_lr - F.avg_pool2d(hr, scale)).abs().max() > 1e-3  # the flow is not a trivial pooling


def test_log_p_is_the_log_det_plus_the_dirac_term(no_grad):
    flow = tiny_hcflow(4)
    hr = torch.rand(1, 3, 16, 24)
    _, fake_lr, log_det = flow.forward_pass(hr)
    lr = fake_lr + 0.01
    _, log_p = flow.encode(hr, flow.condition(lr))
    n = lr.numel()
    dirac = n * (6.0 - 0.5 * torch.log(torch.tensor(2 * torch.pi)) - 0.5 * 0.01**2 * torch.exp(torch.tensor(12.0)))
    torch.testing.assert_close(log_p, log_det + dirac, atol=0.1, rtol=1e-5)
    ctx = flow.condition(lr)
    assert torch.allclose(flow.nll(log_p, ctx), -log_p / (torch.log(torch.tensor(2.0)) * 16 * 24))


def _jacobian_logdet(layer, x, cond):
    fn = lambda t: layer(t.view_as(x), cond)[0].flatten()  # noqa: E731
    return torch.linalg.slogdet(torch.autograd.functional.jacobian(fn, x.flatten()))[1]


@pytest.mark.parametrize("cond_channels", [0, 5])
@pytest.mark.parametrize("make", [AtanAffineCoupling, HCFlowStep], ids=["coupling", "step"])
def test_log_det_is_the_jacobian_s(make, cond_channels):
    torch.manual_seed(0)
    layer = make(5, cond_channels, 8).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(1, 5, 3, 4, dtype=torch.float64)
    cond = torch.randn(1, cond_channels, 3, 4, dtype=torch.float64) if cond_channels else None
    y, logdet = layer(x, cond)
    torch.testing.assert_close(logdet[0], _jacobian_logdet(layer, x, cond))
    back, inv_logdet = layer.inverse(y, cond)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inv_logdet, -logdet)
    if make is AtanAffineCoupling:  # the bounded log-scale: |log s| < 0.318 * pi / 2 per element
        assert logdet.abs().item() < 0.5 * 3 * 3 * 4


def test_initial_prior_is_the_standardised_latent_of_the_bicubic_lr(no_grad):
    flow = tiny_hcflow(4)
    lr = torch.rand(1, 3, 6, 5)
    ctx = flow.condition(lr)
    z0 = flow.initial_prior(lr, ctx)
    assert [tuple(t.shape) for t in z0] == flow.latent_shapes(ctx)
    for t in z0:
        torch.testing.assert_close(t.mean(1), torch.zeros_like(t[:, 0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(t.std(1), torch.ones_like(t[:, 0]), atol=1e-5, rtol=0)
    raw, _, _ = flow.forward_pass(F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False))
    for t, r in zip(z0, raw):
        torch.testing.assert_close(t * (r.std(1, keepdim=True) + 1e-8) + r.mean(1, keepdim=True), r)
    with pytest.raises(ValueError, match="one initial prior"):
        flow.initial_prior(lr, ctx, kind="antialiased")


def test_wrong_sizes_are_refused():
    flow = tiny_hcflow(4)
    with pytest.raises(ValueError, match="fixed-scale x4"):
        flow.condition(torch.rand(1, 3, 5, 5), (21, 20))
    ctx = flow.condition(torch.rand(1, 3, 5, 5))
    with pytest.raises(ValueError, match="does not fit"):
        flow.decode((torch.zeros(1, 21, 5, 5),), ctx)
    with pytest.raises(ValueError, match="20x20"):
        flow.encode(torch.rand(1, 3, 16, 16), ctx)


def test_project_format_round_trip_is_bit_exact(tmp_path, no_grad):
    flow = tiny_hcflow(8)
    again = load_flow(save_flow(flow, tmp_path / "h.safetensors"))
    assert isinstance(again, HCFlow) and again.config == flow.config
    assert read_checkpoint(tmp_path / "h.safetensors")[1]["family"] == "hcflow"
    lr = torch.rand(1, 3, 3, 4)
    z = flow.sample_latent(flow.condition(lr), 0.8, torch.Generator().manual_seed(0))
    assert torch.equal(flow.decode(z, flow.condition(lr)), again.decode(z, again.condition(lr)))


def test_released_layout_is_recognised_with_or_without_module_prefix(tmp_path, no_grad):
    flow = tiny_hcflow(4)
    sd = flow.state_dict()
    assert registry.detect("flow", sd).name == "hcflow"
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pth")
    loaded = load_flow(tmp_path / "ddp.pth")
    assert loaded.config == flow.config
    for k, v in sd.items():
        assert torch.equal(loaded.state_dict()[k], v)
    del sd["flow.layers.1.permute.weight"]
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="does not match an HCFlow x4 model.*flow.layers.1.permute.weight"):
        load_flow(tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="RRDB taps do not apply to hcflow"):
        load_flow(tmp_path / "ddp.pth", taps=[0])


def test_released_configs_latents():
    for name, cfg in RELEASED.items():
        with torch.device("meta"):
            flow = HCFlow(cfg)
        ctx = type("Ctx", (), {"lr": torch.empty(2, 3, 10, 12, device="meta")})()
        expected = [(2, 21, 10, 12), (2, 6, 20, 24)] if cfg.scale == 4 else \
            [(2, 45, 10, 12), (2, 12, 20, 24), (2, 6, 40, 48)]
        assert flow.latent_shapes(ctx) == expected, name
