"""The 3x3 convolution of a nearest-upsampled map at the map's own size, and its use in
SRFlow's coupling layers (with the cached condition kernels)."""
import pytest
import torch
import torch.nn.functional as F

from flowsr_lp.flows.layers import CondAffineCoupling
from flowsr_lp.nets.upsampled_conv import UpsampledConcat, conv3x3, conv3x3_kernels, conv3x3_nearest_up


@pytest.mark.parametrize("r", [2, 3, 4])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (8, 8)])
def test_equals_the_convolution_of_the_upsampled_map(r, size):
    g = torch.Generator().manual_seed(r)
    x = torch.randn(2, 5, *size, generator=g, dtype=torch.float64)
    w = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    ref = F.conv2d(F.interpolate(x, scale_factor=r, mode="nearest"), w, padding=1)
    out = conv3x3_nearest_up(x, w, r)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_channels_last_input_and_float32():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 12, 10, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 16, 3, 3, generator=g)
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, padding=1)
    torch.testing.assert_close(conv3x3_nearest_up(x, w, 2), ref, rtol=1e-5, atol=1e-4)


def test_rejects_what_it_cannot_compute():
    x, w = torch.zeros(1, 2, 4, 4), torch.zeros(3, 2, 3, 3)
    with pytest.raises(ValueError, match="factor"):
        conv3x3_nearest_up(x, w, 1)
    with pytest.raises(ValueError, match="3x3"):
        conv3x3_nearest_up(x, torch.zeros(3, 2, 1, 1), 2)


def test_concat_convolution_and_materialize():
    g = torch.Generator().manual_seed(1)
    fine = torch.randn(2, 3, 12, 14, generator=g, dtype=torch.float64)
    coarse = torch.randn(2, 6, 6, 7, generator=g, dtype=torch.float64)
    cond = UpsampledConcat(fine, coarse, 2)
    full = cond.materialize()
    assert cond.shape == full.shape and cond.dtype == full.dtype
    w = torch.randn(5, 9, 3, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(conv3x3(cond, conv3x3_kernels(cond, w)), F.conv2d(full, w, padding=1), rtol=0, atol=1e-12)
    assert cond.to(torch.float32).coarse.dtype == torch.float32


def _coupling(seed=0):
    torch.manual_seed(seed)
    layer = CondAffineCoupling(12, 9, hidden=8)
    for p in layer.parameters():  # the zero-initialised last convs would hide the condition
        torch.nn.init.normal_(p, std=0.3)
    return layer.eval()


def test_coupling_gives_the_same_with_a_split_or_a_full_condition():
    layer = _coupling().double()
    g = torch.Generator().manual_seed(2)
    parts = [torch.randn(1, 3, 8, 10, generator=g), torch.randn(1, 6, 4, 5, generator=g)]
    cond = UpsampledConcat(*(p.double() for p in parts), 2)
    z = torch.randn(1, 12, 8, 10, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y_split, ld_split = layer(z, cond)
        y_full, ld_full = layer(z, cond.materialize())
        back, ld_back = layer.inverse(y_split, cond)
    torch.testing.assert_close(y_split, y_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_split, ld_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back, z, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ld_back, -ld_split)


def test_cached_condition_kernels_follow_weight_changes():
    layer = _coupling()
    g = torch.Generator().manual_seed(3)
    cond = UpsampledConcat(torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 6, 4, 4, generator=g), 2)
    z = torch.randn(1, 12, 8, 8, generator=g)
    with torch.no_grad():
        first = layer(z, cond)[0]
        assert torch.equal(layer(z, cond)[0], first)  # reused
        layer.fFeatures[0].weight.mul_(0.5)  # an in-place change must not be served stale
        changed = layer(z, cond)[0]
        fresh = _coupling()
        fresh.load_state_dict(layer.state_dict())
        torch.testing.assert_close(changed, fresh(z, cond)[0], rtol=0, atol=0)
    assert not torch.equal(changed, first)
    # and the full map (another layout) gets its own kernels
    with torch.no_grad():
        torch.testing.assert_close(layer(z, cond.materialize())[0], changed, rtol=1e-5, atol=1e-5)


def test_training_mode_gets_gradients_through_the_kernels():
    layer = _coupling().train()
    g = torch.Generator().manual_seed(4)
    cond = UpsampledConcat(torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 6, 4, 4, generator=g), 2)
    y, ld = layer(torch.randn(1, 12, 8, 8, generator=g), cond)
    (y.square().sum() + ld.sum()).backward()
    assert layer.fFeatures[0].weight.grad is not None and layer.fFeatures[0].weight.grad.abs().sum() > 0
    assert layer.fAffine[0].weight.grad[:, 6:].abs().sum() > 0  # the condition's share of fAffine
