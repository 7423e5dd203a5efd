"""The invertible-layer contract: one signature everywhere, sequences, cached inverse weights."""
import inspect

import pytest
import torch

from flowsr_lp.flows import layers
from flowsr_lp.flows.layers import InvertibleLayer, InvertibleLinear, InvertibleSequence, InvConv1x1
from flowsr_lp.flows.linf import AffineFlow, ConditionalAffine

from helpers import tiny_linf, tiny_srflow


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_layer_has_the_same_signature():
    found = {c.__name__ for c in _subclasses(InvertibleLayer)}
    assert {"ActNorm", "InvConv1x1", "InvertibleLinear", "CondAffineCoupling", "FlowStep", "Squeeze",
            "InvertibleSequence", "ConditionalAffine", "AffineFlow"} <= found
    for cls in _subclasses(InvertibleLayer):
        for name in ("forward", "inverse"):
            params = list(inspect.signature(getattr(cls, name)).parameters.values())
            assert [p.name for p in params][2:] == ["cond"] and params[2].default is None, (cls, name)


def test_linear_and_sequence_log_dets_are_the_jacobians():
    torch.manual_seed(0)
    lin = InvertibleLinear(5)
    x = torch.randn(3, 5)
    y, ld = lin(x)
    jac = torch.autograd.functional.jacobian(lambda v: lin(v[None])[0][0], x[0])
    torch.testing.assert_close(ld, torch.linalg.slogdet(jac)[1], atol=1e-5, rtol=1e-5)
    back, ld_inv = lin.inverse(y)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld_inv, -ld)

    seq = InvertibleSequence([layers.ActNorm(3), layers.InvConv1x1(3), layers.Squeeze(), layers.FlowStep(12, None)])
    with torch.no_grad():
        for p in seq.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 3, 4, 2)
    y, ld = seq(x)
    assert y.shape == seq.output_shape(x.shape) == (2, 12, 2, 1) and ld.shape == (2,)
    back, ld_inv = seq.inverse(y)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld_inv, -ld)
    jac = torch.autograd.functional.jacobian(lambda v: seq(v.view(1, 3, 4, 2))[0].flatten(), x[:1].flatten())
    torch.testing.assert_close(ld[0], torch.linalg.slogdet(jac)[1], atol=1e-4, rtol=1e-4)


def test_linf_affine_flow_is_a_layer_with_the_jacobian_log_det():
    torch.manual_seed(0)
    flow = AffineFlow(4, 3)
    x, cond = torch.randn(5, 4), torch.randn(5, 3, 2, 4)
    z, ld = flow(x, cond)
    back, ld_inv = flow.inverse(z, cond)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld_inv, -ld)
    assert torch.equal(flow.invert(z, cond), back)  # decoding's path, without the log-det
    for n in range(2):  # each row has its own condition, hence its own log-det
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None], cond[n:n + 1])[0][0], x[n])
        torch.testing.assert_close(ld[n], torch.linalg.slogdet(jac)[1], atol=1e-5, rtol=1e-5)
    assert not list(ConditionalAffine(0).parameters())  # key names stay LINF's: linears.i, last


@pytest.mark.parametrize("make", [lambda: InvertibleLinear(4), lambda: InvConv1x1(4)], ids=["linear", "conv1x1"])
def test_inverse_weight_is_cached_in_eval_and_recomputed_when_the_weight_changes(make):
    layer = make().eval()
    w = layer.square_weight()
    with torch.no_grad():
        first = layer.weight_inverse()
        assert layer.weight_inverse() is first  # reused
        w.mul_(2)  # an in-place change (optimizer step, manual edit)
        second = layer.weight_inverse()
        assert second is not first
        torch.testing.assert_close(second, torch.linalg.inv(w))
        layer.load_state_dict({k: v * 3 for k, v in layer.state_dict().items()})
        third = layer.weight_inverse()
        torch.testing.assert_close(third, torch.linalg.inv(layer.square_weight()))
        layer.double()
        assert layer.weight_inverse().dtype == torch.float64
    layer.train()
    with torch.no_grad():
        assert layer.weight_inverse() is not layer.weight_inverse()  # training mode: never cached
    layer.eval()
    g = layer.weight_inverse()  # a gradient to the weight is wanted: computed, with a graph
    assert g.requires_grad and g is not layer.weight_inverse()


def test_flows_decode_the_same_with_and_without_the_cache():
    for flow in (tiny_linf(3), tiny_srflow(4)):
        lr = torch.rand(1, 3, 6, 6)
        with torch.no_grad():
            ctx = flow.condition(lr, (24, 24))
            z = flow.sample_latent(ctx, 0.7, torch.Generator().manual_seed(0))
            cached = [flow.decode(z, ctx) for _ in range(2)]
            flow.train()  # no cache in training mode
            fresh = flow.decode(z, ctx)
            flow.eval()
        assert torch.equal(cached[0], cached[1]) and torch.equal(cached[0], fresh)


def test_module_apply_reaches_every_linf_submodule():
    """No layer shadows nn.Module.apply(fn) (weight initialisers recurse through it)."""
    seen = []
    tiny_linf().apply(lambda m: seen.append(type(m).__name__))
    assert "ConditionalAffine" in seen and "InvertibleLinear" in seen
