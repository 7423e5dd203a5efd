"""Large images in tiles: tile steps that keep the HR / patch grids aligned, and a tiled
upscale that equals the whole-image one away from the margins."""
import pytest
import torch

from flowsr_lp import SuperResolver, load_flow
from flowsr_lp.errors import UsageError
from flowsr_lp.pipeline import TemperatureSampling
from flowsr_lp import tiles
from flowsr_lp.tiles import tile_scale, tile_unit, upscale_tiled
from flowsr_lp.upscale import upscale_with_retries

from conftest import REFERENCE, need


@pytest.mark.parametrize("scale,patch,lr_multiple,unit", [(4, 1, 1, 1), (4, 3, 1, 3), (2.5, 1, 1, 2), (3.5, 3, 1, 6),
                                                           (4, 1, 2, 2), (8, 1, 2, 2)])
def test_tile_unit(scale, patch, lr_multiple, unit):
    assert tile_unit(scale, patch, lr_multiple) == unit


def test_untileable_scale_is_a_usage_error():
    with pytest.raises(UsageError, match="cannot be tiled"):
        tile_unit(1.37, 3)


def test_tiled_equals_whole_image(no_grad):
    flow = load_flow(need(REFERENCE / "linf-patch-edsr-baseline.pth"))
    lr = torch.rand(1, 3, 70, 61, generator=torch.Generator().manual_seed(0))
    resolver = SuperResolver(flow)
    tau0 = TemperatureSampling(0.0)  # deterministic: tiles must reproduce the whole image
    whole = resolver(lr, scale=4, strategy=tau0).images
    tiled = upscale_tiled(resolver, lr, 4, tile=24, margin=12, strategy=tau0, progress=False)
    assert tiled.shape == whole.shape == (1, 3, 280, 244)
    torch.testing.assert_close(tiled, whole, atol=2e-4, rtol=1e-4)
    # sampling: one noise stream over the tiles, so no tile repeats another's noise
    sampled = upscale_tiled(resolver, lr, 4, tile=24, margin=12, strategy=TemperatureSampling(0.8, seed=3), progress=False)
    a, b = sampled[..., :96, :96] - tiled[..., :96, :96], sampled[..., :96, 96:192] - tiled[..., :96, 96:192]
    assert (a - b).abs().mean() > 0.01


def test_large_images_are_tiled_only_where_tiling_is_exact(no_grad):
    flow = load_flow(need(REFERENCE / "linf-patch-edsr-baseline.pth"))
    resolver, lr = SuperResolver(flow), torch.rand(1, 3, 30, 40)
    assert tile_scale(resolver, lr, (120, 160), above=100) == 4
    assert tile_scale(resolver, lr, (120, 160), above=30 * 40) is None  # small enough to run whole
    assert tile_scale(resolver, lr, (120, 150), above=100) is None  # anisotropic
    assert tile_scale(resolver, lr, (41, 55), above=100) is None  # no whole-pixel tiles at 1.37x


def test_cli_path_tiles_a_large_image(monkeypatch, no_grad):
    flow = load_flow(need(REFERENCE / "linf-patch-edsr-baseline.pth"))
    resolver = SuperResolver(flow)
    lr = torch.rand(3, 70, 61, generator=torch.Generator().manual_seed(0))
    whole = upscale_with_retries(resolver, lr, (280, 244), tau=0.0)
    monkeypatch.setattr(tiles, "TILE_ABOVE_LR_PIXELS", 48 * 48)
    calls = []
    monkeypatch.setattr(tiles, "upscale_tiled", lambda *a, **k: calls.append(k) or upscale_tiled(*a, **k))
    tiled = upscale_with_retries(resolver, lr, (280, 244), tau=0.0)
    assert calls and tiled.shape == whole.shape == (3, 280, 244)
    torch.testing.assert_close(tiled, whole, atol=2e-4, rtol=1e-4)
