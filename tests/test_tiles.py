"""Tiling inside the pipeline (`SuperResolver(tile=...)`, issue 21 item 1): tile steps that
keep the HR / patch grids aligned, latent windows that cover the whole latent once, and tiles
that give the whole image's pixels with the bundled trained models on real photos, with the
same seed, with and without the learned prior."""
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from flowsr_lp import SuperResolver, load_flow, load_prior, pipeline
from flowsr_lp.cli import main
from flowsr_lp.data.resize import imresize
from flowsr_lp.errors import UsageError
from flowsr_lp.flows.linf import LINF
from flowsr_lp.hub.resolve import bundled_path
from flowsr_lp.pipeline import TemperatureSampling
from flowsr_lp.tiles import tile_unit

from conftest import DATA, need
from helpers import tiny_linf, tiny_srflow


@pytest.mark.parametrize("scale,patch,lr_multiple,unit", [(4, 1, 1, 1), (4, 3, 1, 3), (2.5, 1, 1, 2), (3.5, 3, 1, 6),
                                                           (4, 1, 2, 2), (8, 1, 2, 2)])
def test_tile_unit(scale, patch, lr_multiple, unit):
    assert tile_unit(scale, patch, lr_multiple) == unit


def test_untileable_scale_is_a_usage_error():
    with pytest.raises(UsageError, match="cannot be tiled"):
        tile_unit(1.37, 3)


@pytest.mark.parametrize("make,scale,lr_hw", [(tiny_linf, 3.5, (46, 62)), (tiny_srflow, 4, (33, 26))])
def test_tile_windows_cover_the_whole_latent_and_image_once(make, scale, lr_hw):
    resolver = SuperResolver(make(), tile=12, tile_margin=5)
    size = (int(lr_hw[0] * scale), int(lr_hw[1] * scale))
    grid = resolver.tiles(lr_hw, size, 12)
    whole = resolver.prepare(torch.rand(1, 3, *lr_hw), size=size, tile="off")
    assert [s[1:] for s in grid.shapes] == [s[1:] for s in resolver.flow.latent_shapes(whole.ctx)]
    assert len(list(grid)) == len(grid) > 4
    hr = torch.zeros(size)
    latents = [torch.zeros(s[-2:]) for s in grid.shapes]
    for t in grid:
        region, kept, at = grid.hr(t)
        hr[at] += 1
        assert region == (round((t.r1 - t.r0) * scale), round((t.c1 - t.c0) * scale)) and kept[0].stop <= region[0]
        for i, z in enumerate(latents):
            (ki, kj), (wi, wj) = grid.kept(t, i)
            ri, rj = grid.region(t, i)
            z[wi, wj] += 1
            assert (ki.start + ri.start, kj.start + rj.start) == (wi.start, wj.start)  # kept inside the region
    assert bool((hr == 1).all()) and all(bool((z == 1).all()) for z in latents)


def test_auto_tiles_only_large_images_and_the_seed_gives_the_same_image(monkeypatch, no_grad):
    resolver = SuperResolver(tiny_linf())
    lr = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(0))
    assert resolver.prepare(lr, scale=2).tiles is None  # below the auto threshold: whole
    monkeypatch.setattr(pipeline, "TILE_ABOVE_LR_PIXELS", 30 * 30)
    monkeypatch.setattr(pipeline, "AUTO_TILE", 18)
    tiled = resolver.prepare(lr, scale=2)
    assert tiled.ctx is None and len(tiled.tiles) == 3 * 3
    assert resolver.prepare(lr, size=(80, 100)).tiles is None  # anisotropic: auto runs it whole
    whole = resolver.prepare(lr, scale=2, tile="off")
    for seed in (3, 4):
        s = TemperatureSampling(0.8, seed=seed)
        a, b = resolver.generate(tiled, s).images, resolver.generate(whole, s).images
        assert (a - b).abs().max() < 1e-4
    assert (resolver.generate(tiled, TemperatureSampling(0.8, seed=3)).images - a).abs().mean() > 0.01


def test_bad_tile_options_are_usage_errors():
    flow = tiny_linf()
    for bad in (0, -64, 1.5, "on", True):
        with pytest.raises(UsageError, match="tile must be"):
            SuperResolver(flow, tile=bad)
    with pytest.raises(UsageError, match="tile_margin"):
        SuperResolver(flow, tile_margin=-1)
    resolver = SuperResolver(flow, tile=16)
    with pytest.raises(UsageError, match="cannot be tiled"):
        resolver.prepare(torch.rand(1, 3, 40, 40), size=(80, 100))
    with pytest.raises(UsageError, match="cannot be tiled"):  # 41/40: no LR step up to 64 whole HR patches
        resolver.prepare(torch.rand(1, 3, 40, 40), size=(41, 41))
    assert resolver.prepare(torch.rand(1, 3, 40, 40), size=(41, 41), tile="off").tiles is None
    assert len(resolver.prepare(torch.rand(1, 3, 40, 40), scale=1.37).tiles) == 4  # 55/40 = 1.375: steps of 24


# ---- the bundled trained models on real photos ----------------------------------------------
def _lr(hr_u8: np.ndarray, side: tuple[int, int]) -> torch.Tensor:
    """The centre 4*side crop of an HR photo, MATLAB-bicubic downscaled x4 (evaluate's LR)."""
    h, w = hr_u8.shape[:2]
    H, W = 4 * side[0], 4 * side[1]
    crop = torch.from_numpy(np.ascontiguousarray(hr_u8[(h - H) // 2:(h - H) // 2 + H, (w - W) // 2:(w - W) // 2 + W, :3]))
    return (imresize(crop.permute(2, 0, 1), out_size=side).float() / 255)[None]


def _photos():
    yield "astronaut", _lr(skdata.astronaut(), (120, 112))
    yield "coffee", _lr(skdata.coffee(), (99, 121))  # odd sides: SRFlow pads the last tiles as the whole image
    for name in ("baboon", "zebra"):
        yield name, _lr(np.asarray(Image.open(need(DATA / "Set14" / "HR" / f"{name}.png")).convert("RGB")), (101, 118))


def _bundled(family):
    flow = load_flow(bundled_path(f"{family}-small"))
    return flow, load_prior(bundled_path(f"{family}-small-lp"))


def _max_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference of the shown (clamped) images, in 1/255."""
    return ((a.clamp(0, 1) - b.clamp(0, 1)).abs().max() * 255).item()


def test_tiles_give_the_whole_image_linf_quick(no_grad):
    flow, prior = _bundled("linf")
    lr = _lr(skdata.chelsea(), (70, 76))
    with_prior = SuperResolver(flow, prior)
    for resolver, strategy in ((SuperResolver(flow), TemperatureSampling(0.5, seed=1)),
                               (with_prior, with_prior.strategy.with_noise(variation=0.5, seed=1))):
        whole = resolver(lr, scale=4, strategy=strategy, tile="off").images
        tiled = resolver(lr, scale=4, strategy=strategy, tile=32).images
        assert _max_gap(tiled, whole) <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["linf", "srflow"])
def test_tiles_of_64_and_96_give_the_whole_image_on_photos(family, no_grad):
    """Every pixel within 1/255 of the whole image (measured: under 0.02/255), sampled at
    the flow's temperature with a seed, with the learned prior, and around it (variation 0.5)."""
    flow, prior = _bundled(family)
    plain, lp = SuperResolver(flow), SuperResolver(flow, prior)
    methods = [("tau", plain, TemperatureSampling(None, seed=5)), ("LP", lp, lp.strategy),
               ("LP variation", lp, lp.strategy.with_noise(variation=0.5, seed=5))]
    gaps = {}
    for name, lr in _photos():
        for method, resolver, strategy in methods:
            whole = resolver(lr, scale=4, strategy=strategy, tile="off")
            assert whole.all_finite
            for tile in (64, 96):
                tiled = resolver(lr, scale=4, strategy=strategy, tile=tile)
                gaps[name, method, tile] = _max_gap(tiled.images, whole.images)
    assert max(gaps.values()) <= 1.0, gaps


def test_upscale_command_tile_option(tmp_path, capsys, monkeypatch):
    """`upscale --tile N` writes the image `--tile off` writes (bundled LINF + prior, sampled
    around it with a seed); a tile side of 0 is a bad option (exit 2)."""
    src = tmp_path / "chelsea.png"
    Image.fromarray(np.ascontiguousarray(skdata.chelsea()[60:210, 150:262])).save(src)
    sides, condition = [], LINF.condition
    monkeypatch.setattr(LINF, "condition", lambda self, lr, *a, **k: sides.append(lr.shape[-2]) or condition(self, lr, *a, **k))
    outs = {}
    for tile in ("off", "48"):
        sides.clear()
        out = tmp_path / f"tile-{tile}.png"
        code = main(["upscale", "-q", str(src), "--scale", "2", "--variation", "0.5", "--seed", "3",
                     "--tile", tile, "-o", str(out)])
        assert code == 0, capsys.readouterr().err
        outs[tile] = np.asarray(Image.open(out), dtype=int)
        assert max(sides) == (150 if tile == "off" else 48 + 2 * 33)  # whole, or tiles with 33 of context
    assert outs["off"].shape == (300, 224, 3) and np.abs(outs["off"] - outs["48"]).max() <= 1
    with pytest.raises(SystemExit) as e:
        main(["upscale", "-q", str(src), "--tile", "0", "-o", str(tmp_path / "x.png")])
    assert e.value.code == 2 and "tile side must be >= 1" in capsys.readouterr().err
