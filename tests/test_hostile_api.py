"""Hostile inputs to the Python API (issue 11, items 4 and 9; issue 21, item 3): every misuse is a
TypeError or ValueError that says what was expected, raised at once; uint8 and float64/float16
inputs are converted instead of giving garbage or failing deep inside a convolution."""
import time

import numpy as np
import pytest
import torch
from PIL import Image

from flowsr_lp import SuperResolver, TemperatureSampling
from flowsr_lp.errors import ImageError, UsageError
from flowsr_lp.pipeline import MAX_OUTPUT_PIXELS, as_lr_batch

from helpers import tiny_linf, tiny_linf_prior, tiny_srflow


@pytest.fixture(scope="module")
def linf():
    return tiny_linf(3)


@pytest.fixture(scope="module")
def srflow():
    return tiny_srflow(4)


def _lr(b=1, h=6, w=7, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---- item 4: the output-pixel limit ----------------------------------------------------------
def test_a_huge_output_is_refused_at_once(linf):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="over this SuperResolver's limit of 64 MP"):
        SuperResolver(linf).upscale(_lr(), (10**9, 10**9))
    with pytest.raises(ValueError, match="limit"):
        SuperResolver(linf).upscale(_lr(), scale=2000)
    assert time.perf_counter() - t0 < 2


def test_the_limit_is_configurable_and_can_be_lifted(linf):
    with pytest.raises(ValueError, match="limit of 0.0001 MP"):
        SuperResolver(linf, max_output_pixels=100).upscale(_lr(), (16, 16))
    assert SuperResolver(linf, max_output_pixels=None).upscale(_lr(), (16, 16)).shape == (1, 3, 16, 16)
    assert SuperResolver(linf).max_output_pixels == MAX_OUTPUT_PIXELS


@pytest.mark.parametrize("limit", [0, -5, "big", float("nan")])
def test_a_bad_limit_is_a_value_error(linf, limit):
    with pytest.raises(ValueError, match="max_output_pixels"):
        SuperResolver(linf, max_output_pixels=limit)


# ---- item 9: images ---------------------------------------------------------------------------
def test_a_uint8_tensor_is_read_as_0_to_255(linf):
    res = SuperResolver(linf)
    u8 = (_lr() * 255).round().to(torch.uint8)
    g = torch.Generator()
    a = res.upscale(u8, (14, 15), tau=0.5, generator=g.manual_seed(1))
    b = res.upscale(u8.float() / 255, (14, 15), tau=0.5, generator=g.manual_seed(1))
    assert torch.equal(a, b) and a.abs().max() < 10  # was finite garbage of ~1e17


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_converted(linf, dtype):
    res = SuperResolver(linf)
    lr = _lr()
    g = torch.Generator()
    ref = res.upscale(lr, (14, 15), tau=0.5, generator=g.manual_seed(1))
    out = res.upscale(lr.to(dtype), (14, 15), tau=0.5, generator=g.manual_seed(1))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.05 if dtype != torch.float64 else 1e-5, rtol=0)


BAD_IMAGES = {
    "int64": (lambda: torch.randint(0, 255, (1, 3, 6, 7)), TypeError, "int64"),
    "bool": (lambda: torch.ones(1, 3, 6, 7, dtype=torch.bool), TypeError, "bool"),
    "rank-2": (lambda: torch.rand(6, 7), ValueError, "3 x H x W"),
    "rank-5": (lambda: torch.rand(1, 1, 3, 6, 7), ValueError, "3 x H x W"),
    "one-channel": (lambda: torch.rand(1, 1, 6, 7), ValueError, "3 x H x W"),
    "four-channels": (lambda: torch.rand(1, 4, 6, 7), ValueError, "3 x H x W"),
    "empty-batch": (lambda: torch.rand(0, 3, 6, 7), ValueError, "empty"),
    "zero-height": (lambda: torch.rand(1, 3, 0, 7), ValueError, "empty"),
    "0-255-floats": (lambda: torch.rand(1, 3, 6, 7) * 255, ValueError, "divide"),
    "nan": (lambda: torch.full((1, 3, 6, 7), float("nan")), ValueError, "NaN"),
    "inf": (lambda: torch.full((1, 3, 6, 7), float("inf")), ValueError, "inf"),
    "python-list": (lambda: [[[0.5] * 7] * 6] * 3, ValueError, "unsupported image type"),
    "numpy-int32": (lambda: np.zeros((6, 7, 3), np.int32), TypeError, "int32"),
    "numpy-empty": (lambda: np.zeros((0, 7, 3), np.uint8), ValueError, "H x W x 3"),
    "numpy-2-channels": (lambda: np.zeros((6, 7, 2), np.uint8), ValueError, "H x W x 3"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_say_what_was_expected(linf, case):
    make, kind, match = BAD_IMAGES[case]
    with pytest.raises(kind, match=match):
        SuperResolver(linf)(make(), scale=2)


BAD_SIZES = {
    "floats": ((1e9, 1e9), TypeError), "float-ints": ((14.0, 15.0), TypeError), "zero": ((0, 15), ValueError),
    "negative": ((-14, 15), ValueError), "one-number": ((14,), TypeError), "string": ("14x15", TypeError),
    "none-inside": ((None, 15), TypeError), "bools": ((True, True), TypeError),
}


@pytest.mark.parametrize("case", sorted(BAD_SIZES))
def test_bad_output_sizes(linf, case):
    size, kind = BAD_SIZES[case]
    with pytest.raises(kind, match="size"):
        SuperResolver(linf).upscale(_lr(), size)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -2, 0, "4", (2,), (2, float("nan")), (2, 3, 4)],
                         ids=["nan", "inf", "negative", "zero", "string", "one-of-two", "nan-in-pair", "three"])
def test_bad_scales(linf, scale):
    with pytest.raises(ValueError, match="scale"):
        SuperResolver(linf).upscale(_lr(), scale=scale)


def test_numpy_uint16_and_gray_are_fine(linf):
    out = SuperResolver(linf)(np.full((6, 7), 30000, np.uint16), scale=2).output
    assert out.shape == (12, 14, 3) and out.dtype == np.uint8


# ---- item 9: the flow interface ------------------------------------------------------------------
@pytest.fixture(params=["linf", "srflow"])
def flow(request, linf, srflow):
    return linf if request.param == "linf" else srflow


def _ctx(flow, b=1):
    lr = _lr(b, 6, 8)
    return lr, flow.condition(lr, (24, 32))


@pytest.mark.parametrize("make,kind,match", [
    (lambda lr: (lr * 255).to(torch.uint8), TypeError, "uint8"),
    (lambda lr: lr[:, :1], ValueError, "B x 3 x H x W"),
    (lambda lr: lr[0], ValueError, "B x 3 x H x W"),
    (lambda lr: lr[:0], ValueError, "empty"),
    (lambda lr: lr.long(), TypeError, "int64"),
], ids=["uint8", "one-channel", "rank-3", "empty", "int64"])
def test_condition_checks_the_lr(flow, make, kind, match):
    with pytest.raises(kind, match=match):
        flow.condition(make(_lr(1, 6, 8)), (24, 32))


def test_linf_condition_refuses_float_sizes(linf):
    with pytest.raises(TypeError, match="integers"):
        linf.condition(_lr(), (12.5, 14.0))


@pytest.mark.parametrize("hr_shape,match", [((1, 3, 24, 30), "24x30 but this context is for 24x32"),
                                            ((2, 3, 24, 32), "2 images"), ((1, 3, 12, 16), "12x16")],
                         ids=["narrow", "batch", "lr-sized"])
def test_encode_checks_the_hr(flow, hr_shape, match):
    _, ctx = _ctx(flow)
    with pytest.raises(ValueError, match=match):
        flow.encode(torch.rand(hr_shape), ctx)


def test_encode_converts_float64(flow):
    _, ctx = _ctx(flow)
    hr = torch.rand(1, 3, 24, 32, dtype=torch.float64)
    z64, lp64 = flow.encode(hr, ctx)
    z32, lp32 = flow.encode(hr.float(), ctx)
    torch.testing.assert_close(lp64, lp32)


def _wrong_latents(flow, ctx):
    good = flow.sample_latent(ctx, 0.5, torch.Generator().manual_seed(0))
    return {
        "bare-tensor": (good[0], TypeError),
        "missing-part": (good[:-1] if len(good) > 1 else (), ValueError),
        "extra-part": (good + (good[0],), ValueError),
        "wrong-spatial": (tuple(z[..., :-1] for z in good), ValueError),
        "wrong-channels": (tuple(z[:, 1:] for z in good), ValueError),
        "wrong-batch": (tuple(torch.cat([z, z]) for z in good), ValueError),
        "integer": (tuple(z.long() for z in good), TypeError),
        "numpy": (tuple(z.numpy() for z in good), TypeError),
    }


@pytest.mark.parametrize("case", ["bare-tensor", "missing-part", "extra-part", "wrong-spatial", "wrong-channels",
                                  "wrong-batch", "integer", "numpy"])
def test_decode_checks_the_latent(flow, case):
    _, ctx = _ctx(flow)
    latent, kind = _wrong_latents(flow, ctx)[case]
    with pytest.raises(kind, match="latent"):
        flow.decode(latent, ctx)


def test_decode_converts_a_float64_latent(flow):
    _, ctx = _ctx(flow)
    latent = flow.sample_latent(ctx, 0.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(flow.decode(tuple(z.double() for z in latent), ctx), flow.decode(latent, ctx))


# ---- issue 21, item 3: one documented outcome per case ----------------------------------------
@pytest.mark.parametrize("tau", [-1, -1e-9, 10.001, 1e6, float("nan"), float("inf"), "0.5", True],
                         ids=["-1", "tiny-negative", "over-10", "1e6", "nan", "inf", "string", "bool"])
def test_tau_must_be_a_finite_number_in_0_to_10(linf, tau):
    with pytest.raises(ValueError, match="tau must be a finite number in \\[0, 10\\]"):
        TemperatureSampling(tau)
    with pytest.raises(ValueError, match="tau"):
        SuperResolver(linf).upscale(_lr(), scale=2, tau=tau)


def test_tau_bounds_are_accepted(linf):
    assert TemperatureSampling(0).tau == 0.0 and TemperatureSampling(10).tau == 10.0
    assert TemperatureSampling(np.float32(0.5)).tau == 0.5 and TemperatureSampling().tau is None


def test_upscale_with_a_prior_refuses_tau_and_names_it(linf):
    res = SuperResolver(linf, tiny_linf_prior())
    with pytest.raises(UsageError, match="tau=0.8 with a learned prior"):
        res.upscale(_lr(), scale=2, tau=0.8)
    torch.testing.assert_close(res.upscale(_lr(), scale=2), res(_lr(), scale=2).images, rtol=0, atol=0)


@pytest.mark.parametrize("size_kw", [{"out_size": (14, 15)}, {"scale": 2}, {"scale": (2, 2.5)}])
def test_upscale_is_a_wrapper_of_call(linf, size_kw):
    res = SuperResolver(linf)
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    old = res.upscale(_lr(), **size_kw, tau=0.6, generator=g())
    size = {"size": size_kw["out_size"]} if "out_size" in size_kw else size_kw
    new = res(_lr(), **size, strategy=TemperatureSampling(0.6, generator=g())).images
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    default = res.upscale(_lr(), scale=2)  # tau None: the flow's recommended temperature
    assert default.shape == (1, 3, 12, 14) and torch.isfinite(default).all()


def test_numpy_floats_must_be_in_0_1(linf):
    res = SuperResolver(linf)
    a = np.random.default_rng(0).random((6, 7, 3))
    with pytest.raises(ValueError, match="divide 0..255 values by 255"):
        res(a * 255, scale=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        res(np.where(a > 0.5, np.nan, a), scale=2)
    ref = res(a.astype(np.float32), scale=2, strategy=TemperatureSampling(0.5, seed=1)).output
    for dtype in (np.float64, np.float16):  # cast to float32
        out = res(a.astype(dtype), scale=2, strategy=TemperatureSampling(0.5, seed=1)).output
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref, atol=0.02 if dtype == np.float16 else 1e-5)


def test_pil_i_modes_are_16_bit_and_f_is_0_1_never_guessed():
    a16 = np.array([[0, 200], [40000, 65535]], dtype=np.int32)
    for mode_arr in (a16.astype(np.uint16), a16):  # I;16 and I
        t, _ = as_lr_batch(Image.fromarray(mode_arr))
        torch.testing.assert_close(t[0, 1], torch.from_numpy(a16 / 65535).float())
    small = as_lr_batch(Image.fromarray(np.array([[0, 255]], np.int32)))[0]  # 8-bit values in mode I
    assert small.max().item() == pytest.approx(255 / 65535)  # still 16-bit: no peak guessed from the pixels
    f = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    torch.testing.assert_close(as_lr_batch(Image.fromarray(f))[0][0, 2], torch.from_numpy(f))
    for bad, mode, match in ((a16 * 2, "I", "mode I pixels must be in \\[0, 65535\\]"),
                             (a16 - 1, "I", "got values in \\[-1"),
                             (f * 255, "F", "mode F pixels must be in \\[0, 1\\]"),
                             (np.where(f > 0.3, np.nan, f), "F", "NaN")):
        im = Image.fromarray(bad)
        assert im.mode == mode
        with pytest.raises(ImageError, match=match):
            as_lr_batch(im)
