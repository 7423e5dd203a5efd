"""SRFlow beyond the reference vectors: invertibility at any size, layers, sampling."""
import pytest
import torch

from flowsr_lp import load_flow, save_flow
from flowsr_lp.flows import layers
from flowsr_lp.flows.srflow import RELEASED_TAPS, SRFlow, SRFlowConfig, config_from_state_dict

from conftest import REFERENCE, need
from helpers import tiny_srflow


@pytest.mark.parametrize("scale", [4, 8])
@pytest.mark.parametrize("lr_hw", [(6, 8), (7, 9), (5, 4), (1, 3)])
def test_encode_decode_round_trip_any_size(scale, lr_hw):
    flow = tiny_srflow(scale)
    h, w = lr_hw
    lr, hr = torch.rand(2, 3, h, w), torch.rand(2, 3, scale * h, scale * w)
    with torch.no_grad():
        ctx = flow.condition(lr, (scale * h, scale * w))
        latent, log_p = flow.encode(hr, ctx)
        back = flow.decode(latent, ctx)
    assert [z.shape for z in latent] == [torch.Size(s) for s in flow.latent_shapes(ctx)]
    assert log_p.shape == (2,) and torch.isfinite(log_p).all()
    assert back.shape == hr.shape
    assert (back - hr).abs().max() < 1e-3


def test_reference_model_round_trip_with_padding():
    flow = load_flow(need(REFERENCE / "srflow-4x-nb4-k2.pth"), taps=[0, 1, 2, 3])
    for h, w in [(8, 10), (9, 7)]:
        lr, hr = torch.rand(1, 3, h, w), torch.rand(1, 3, 4 * h, 4 * w)
        with torch.no_grad():
            ctx = flow.condition(lr, (4 * h, 4 * w))
            back = flow.decode(flow.encode(hr, ctx)[0], ctx)
        assert (back - hr).abs().max() < 1e-3


def test_latent_layout_4x():
    flow = tiny_srflow(4)
    with torch.no_grad():
        ctx = flow.condition(torch.rand(1, 3, 10, 12), (40, 48))
    assert flow.latent_shapes(ctx) == [(1, 6, 20, 24), (1, 96, 5, 6)]
    eps, z = flow.sample_latent(ctx, 0.9, torch.Generator().manual_seed(0))
    assert eps.shape == (1, 6, 20, 24) and z.shape == (1, 96, 5, 6)
    assert 0.8 < eps.std() < 1.0 and 0.8 < z.std() < 1.0


def test_fixed_scale_is_enforced():
    flow = tiny_srflow(4)
    with pytest.raises(ValueError, match="fixed-scale x4"):
        flow.condition(torch.rand(1, 3, 8, 8), (24, 24))


@pytest.mark.parametrize("layer,cond", [
    (layers.ActNorm(6), None), (layers.InvConv1x1(6), None), (layers.Squeeze(), None),
    (layers.CondAffineCoupling(6, 5, 8), torch.randn(2, 5, 4, 6)),
    (layers.FlowStep(6, 5, 8), torch.randn(2, 5, 4, 6)), (layers.FlowStep(6, None), None)])
def test_layers_are_exact_inverse_pairs(layer, cond):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 6, 4, 6)
    y, ld = layer(x, cond)
    back, ld_inv = layer.inverse(y, cond)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld_inv, -ld)
    assert ld.shape == (2,)
    if not isinstance(layer, layers.Squeeze):  # log-det equals the Jacobian's, by autograd
        f = lambda v: layer(v.view(1, 6, 4, 6), None if cond is None else cond[:1])[0].flatten()
        jac = torch.autograd.functional.jacobian(f, x[:1].flatten())
        torch.testing.assert_close(ld[0], torch.linalg.slogdet(jac)[1], atol=1e-3, rtol=1e-4)


def test_split_round_trip_and_likelihood():
    split = layers.Split2d(12)
    with torch.no_grad():
        for p in split.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 12, 3, 5)
    z1, eps, ld = split(x)
    assert z1.shape == (2, 6, 3, 5) and eps.shape == (2, 6, 3, 5)
    back, ld_inv = split.inverse(z1, eps)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld_inv, -ld)


def test_actnorm_initialisation_only_when_asked():
    flow = tiny_srflow(4)
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    with torch.no_grad():
        ctx = flow.condition(torch.rand(1, 3, 6, 6), (24, 24))
        flow.encode(torch.rand(1, 3, 24, 24), ctx)
        flow.decode(flow.sample_latent(ctx, 1.0, torch.Generator()), ctx)
    assert all(torch.equal(v, flow.state_dict()[k]) for k, v in before.items())
    an = layers.ActNorm(3)
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    an.initialize(x)
    y, _ = an(x)
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (y.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_state_dict_with_module_prefix_and_project_round_trip(tmp_path):
    flow = tiny_srflow(8)
    torch.save({"module." + k: v for k, v in flow.state_dict().items()}, tmp_path / "ddp.pth")
    loaded = load_flow(tmp_path / "ddp.pth", taps=[0, 1])
    assert loaded.config == flow.config
    again = load_flow(save_flow(loaded, tmp_path / "s.safetensors"))
    lr = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        outs = []
        for f in (flow, loaded, again):
            ctx = f.condition(lr, (40, 48))
            outs.append(f.decode(f.sample_latent(ctx, 0.1, torch.Generator().manual_seed(3)), ctx))
    assert torch.isfinite(outs[0]).all()
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_taps_must_be_given_for_non_released_depths(tmp_path):
    from flowsr_lp import CheckpointError

    torch.save(tiny_srflow(4).state_dict(), tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match="cannot infer the 2 RRDB tap indices"):
        load_flow(tmp_path / "s.pth")


def test_released_layouts_use_default_taps():
    """State dicts shaped like SRFlow_DF2K_4X.pth / _8X.pth (key names and shapes only, built on
    the meta device) give the released configs, taps included."""
    for cfg in (SRFlowConfig(), SRFlowConfig(scale=8, taps=RELEASED_TAPS[8])):
        with torch.device("meta"):
            sd = SRFlow(cfg).state_dict()
        assert all(v.is_meta for v in sd.values())
        assert config_from_state_dict(sd) == cfg


def test_decode_is_differentiable_in_every_latent_part():
    flow = tiny_srflow(4)
    with torch.no_grad():
        ctx = flow.condition(torch.rand(1, 3, 6, 6), (24, 24))
    latent = [z.requires_grad_() for z in flow.sample_latent(ctx, 0.5, torch.Generator().manual_seed(0))]
    flow.decode(tuple(latent), ctx).square().mean().backward()
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in latent)
