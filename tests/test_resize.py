"""MATLAB-bicubic imresize: reference vectors (made with MATLAB-style imresize) and properties."""
from __future__ import annotations

import pytest
import torch
from conftest import REFERENCE, need

from flowsr_lp.data import imresize, modcrop


@pytest.fixture(scope="module")
def vec():
    return torch.load(need(REFERENCE / "metrics.vectors.pt"), weights_only=True)


@pytest.mark.parametrize("key, scale", [("imresize_x0_25_float", 0.25), ("imresize_x1_3_float", 1 / 3)])
def test_float_downscale_matches_reference(vec, key, scale):
    out = imresize(vec["hr"], scale)
    assert out.shape == vec[key].shape and out.dtype == torch.float32
    torch.testing.assert_close(out, vec[key], atol=1e-4, rtol=0)


def test_float_upscale_matches_reference(vec):
    out = imresize(vec["imresize_x0_25_float"], 4)
    torch.testing.assert_close(out, vec["imresize_x4_of_x0_25_float"], atol=1e-4, rtol=0)


def test_uint8_path_is_exact(vec):
    out = imresize(vec["hr_uint8"], 0.25)
    assert out.dtype == torch.uint8
    assert torch.equal(out, vec["imresize_x0_25_uint8"])


def test_batched_equals_unbatched_and_out_size(vec):
    x = torch.stack([vec["hr"], vec["sr"]])
    out = imresize(x, out_size=(30, 40))
    torch.testing.assert_close(out[0], imresize(vec["hr"], 0.25), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], imresize(vec["sr"], 0.25), atol=1e-6, rtol=0)


def test_scale_one_is_identity():
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    torch.testing.assert_close(imresize(x, 1.0), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(imresize(x, out_size=(17, 23)), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.7, 2.0, (0.5, 3.0)])
def test_constant_stays_constant(scale):
    x = torch.full((3, 20, 30), 0.37, dtype=torch.float64)
    out = imresize(x, scale)
    torch.testing.assert_close(out, torch.full_like(out, 0.37), atol=1e-12, rtol=0)


def test_anisotropic_scale_and_output_size():
    x = torch.rand(3, 21, 30)
    assert imresize(x, (0.5, 1 / 3)).shape == (3, 11, 10)  # ceil(10.5), ceil(10)
    assert imresize(x, 2.5).shape == (3, 53, 75)


def test_gradients_flow_for_float_input():
    x = torch.rand(1, 2, 8, 6, dtype=torch.float64, requires_grad=True)  # small: gradcheck is O(inputs^2)
    torch.autograd.gradcheck(lambda t: imresize(t, 0.5), (x,))
    y = torch.rand(3, 16, 16, requires_grad=True)
    imresize(y, 0.25).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_downscale_differs_from_nonantialiased():
    x = torch.rand(3, 32, 32, dtype=torch.float64)
    assert (imresize(x, 0.25) - imresize(x, 0.25, antialias=False)).abs().max() > 1e-3


def test_modcrop():
    x = torch.zeros(3, 13, 18)
    assert modcrop(x, 4).shape == (3, 12, 16)
    assert modcrop(x[None], 3).shape == (1, 3, 12, 18)
    with pytest.raises(ValueError):
        modcrop(x, 1.5)


def test_bad_inputs():
    with pytest.raises(ValueError):
        imresize(torch.rand(5, 5), 0.5)
    with pytest.raises(ValueError):
        imresize(torch.rand(3, 5, 5))
    with pytest.raises(TypeError):
        imresize(torch.ones(3, 5, 5, dtype=torch.int32), 0.5)
