"""LR-PSNR at non-integer and anisotropic scales: an HR image scores near-perfect against the
LR the package makes from it (issue 11, item 1); integer scales keep the official protocol."""
import pytest
import torch
from conftest import DATA, need

from flowsr_lp.data import imresize
from flowsr_lp.data.folders import load_rgb_uint8
from flowsr_lp.metrics import lr_psnr, psnr


def _own_lr(hr_u8: torch.Tensor, scale) -> torch.Tensor:
    """The LR `evaluate` and `temperature-map` make: MATLAB bicubic to the rounded size."""
    sh, sw = scale if isinstance(scale, tuple) else (scale, scale)
    return imresize(hr_u8, out_size=(round(hr_u8.shape[-2] / sh), round(hr_u8.shape[-1] / sw)))


def _smooth_image(h=77, w=91) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=g), size=(h, w),
                                        mode="bicubic", align_corners=False)
    return (x.clamp(0, 1)[0] * 255).round().to(torch.uint8)


@pytest.mark.parametrize("scale", [2.5, 3.4, 1.7, (2.0, 3.0), (2.5, 3.4), (3.0, 1.5)])
def test_hr_against_its_own_lr_is_near_perfect(scale):
    hr = _smooth_image()
    lr = _own_lr(hr, scale)
    value = lr_psnr(hr.double()[None] / 255, lr.double()[None] / 255, scale).item()
    assert value > 48, f"x{scale}: {value:.2f} dB"  # only the LR's uint8 rounding remains


@pytest.mark.parametrize("scale", [2.5, 3.4, (2.0, 3.0)])
def test_a_set14_image_against_its_own_lr(scale):
    hr = load_rgb_uint8(sorted(need(DATA / "Set14" / "HR").glob("*.png"))[1])
    lr = _own_lr(hr, scale)
    assert lr_psnr(hr.double()[None] / 255, lr.double()[None] / 255, scale).item() > 50


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_integer_scales_keep_the_nominal_factor(scale):
    hr = torch.rand(1, 3, 12 * scale, 10 * scale, dtype=torch.float64)
    lr = imresize(hr, 1.0 / scale)
    sr = hr + 0.01 * torch.randn_like(hr)
    official = psnr(imresize(sr, scale=1.0 / scale, out_size=tuple(lr.shape[-2:])), lr)
    assert torch.equal(lr_psnr(sr, lr, scale), official)
    assert torch.equal(lr_psnr(sr, lr, (scale, scale)), official)


def test_a_worse_sr_scores_lower_at_a_non_integer_scale():
    hr = _smooth_image().double()[None] / 255
    lr = imresize(hr, out_size=(round(77 / 2.5), round(91 / 2.5)))
    noisy = (hr + 0.05 * torch.randn_like(hr)).clamp(0, 1)
    assert lr_psnr(noisy, lr, 2.5).item() + 10 < lr_psnr(hr, lr, 2.5).item()


@pytest.mark.parametrize("scale", [0, -2, float("nan"), float("inf"), (2.0,), (2.0, 0.0), "4"])
def test_bad_scales_are_value_errors(scale):
    with pytest.raises(ValueError, match="scale"):
        lr_psnr(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 4, 4), scale)


def test_sizes_that_do_not_match_the_scale_are_refused():
    with pytest.raises(ValueError, match="not lr size"):
        lr_psnr(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 8, 8), 4)
