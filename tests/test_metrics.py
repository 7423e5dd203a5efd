"""PSNR/SSIM against the official metric values of the LINF and SRFlow protocols, plus properties."""
from __future__ import annotations

import pytest
import torch
from conftest import REFERENCE, need

from flowsr_lp.data import imresize
from flowsr_lp.metrics import lr_psnr, psnr, ssim, to_uint8_like_srflow


@pytest.fixture(scope="module")
def vec():
    return torch.load(need(REFERENCE / "metrics.vectors.pt"), weights_only=True)


def _close(value, ref, tol):
    assert value.shape == (1,) and value.dtype == torch.float64
    assert abs(value.item() - ref.item()) < tol, (value.item(), ref.item())


def test_psnr_protocols(vec):
    sr, hr = vec["sr"][None], vec["hr"][None]
    _close(psnr(sr, hr, shave=4, y_channel=True), vec["psnr_benchmark_y_shave4"], 1e-4)
    _close(psnr(sr, hr, shave=4), vec["psnr_div2k_rgb_shave4"], 1e-4)
    _close(psnr(sr, hr), vec["psnr_rgb_noshave"], 1e-4)
    _close(psnr(vec["sr_uint8"][None], vec["hr_uint8"][None]), vec["srflow_psnr_uint8_rgb"], 1e-4)


def test_ssim_protocols(vec):
    # LINF's SSIM is on the unrounded floats (on rounded ones it is off by ~2e-4).
    _close(ssim(vec["sr"][None], vec["hr"][None], kind="matlab"), vec["ssim_matlab_gauss11_rgbmean_float255"], 1e-6)
    _close(ssim(vec["sr_uint8"][None], vec["hr_uint8"][None], kind="skimage"),
           vec["srflow_ssim_uint8_skimage7x7"], 1e-6)


def test_to_uint8_like_srflow(vec):
    # The reference sr_uint8 was rounded; SRFlow's own script truncates.
    assert torch.equal(to_uint8_like_srflow(vec["sr"], rounding="round"), vec["sr_uint8"])
    floor = to_uint8_like_srflow(vec["sr"])
    assert floor.dtype == torch.uint8
    assert torch.equal(floor, (vec["sr"].double().clamp(0, 1) * 255).floor().to(torch.uint8))
    assert torch.equal(to_uint8_like_srflow(vec["hr"]), vec["hr_uint8"])  # hr is exactly k / 255


def test_lr_psnr_of_consistent_output_is_high(vec):
    hr = vec["hr"][None].double()
    lr = imresize(hr, 0.25)
    assert torch.isinf(lr_psnr(hr, lr, 4)).all()
    assert lr_psnr(vec["sr"][None], lr, 4).item() < 60


def test_identical_images():
    x = torch.rand(2, 3, 24, 24)
    assert torch.isinf(psnr(x, x)).all() and torch.isinf(psnr(x, x, shave=2, y_channel=True)).all()
    for kind in ("matlab", "skimage"):
        torch.testing.assert_close(ssim(x, x, kind=kind), torch.ones(2, dtype=torch.float64))


def test_more_noise_lowers_psnr_and_ssim():
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    noise = torch.randn_like(x)
    p = [psnr((x + s * noise).clamp(0, 1), x).item() for s in (0.01, 0.05, 0.2)]
    q = [ssim((x + s * noise).clamp(0, 1), x).item() for s in (0.01, 0.05, 0.2)]
    assert p[0] > p[1] > p[2] and q[0] > q[1] > q[2]


@pytest.mark.parametrize("fn", [lambda a, b: psnr(a, b, shave=3, y_channel=True),
                                lambda a, b: ssim(a, b, "matlab"), lambda a, b: ssim(a, b, "skimage")])
def test_batch_equals_per_item(fn):
    a, b = torch.rand(3, 3, 30, 28), torch.rand(3, 3, 30, 28)
    batch = fn(a, b)
    assert batch.shape == (3,)
    torch.testing.assert_close(batch, torch.cat([fn(a[i:i + 1], b[i:i + 1]) for i in range(3)]))


def test_ssim_agrees_with_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    a = torch.randint(0, 256, (3, 40, 37), dtype=torch.uint8)
    b = (a.int() + torch.randint(-30, 31, a.shape)).clamp(0, 255).to(torch.uint8)
    ref = metrics.structural_similarity(a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy(), channel_axis=2)
    assert abs(ssim(a[None], b[None], kind="skimage").item() - ref) < 1e-6
    fa, fb = torch.rand(3, 20, 20, dtype=torch.float64), torch.rand(3, 20, 20, dtype=torch.float64)
    ref = metrics.structural_similarity((fa * 255).permute(1, 2, 0).numpy(), (fb * 255).permute(1, 2, 0).numpy(),
                                        channel_axis=2, data_range=255)
    assert abs(ssim(fa, fb, kind="skimage").item() - ref) < 1e-6


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="shape mismatch"):
        ssim(torch.rand(2, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), kind="gauss")
    with pytest.raises(ValueError):
        lr_psnr(torch.rand(1, 3, 16, 16), torch.rand(1, 1, 4, 4), 4)
