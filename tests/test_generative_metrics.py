"""%Inf, diversity, the grid-artifact score and LPIPS."""
import pytest
import torch
import torch.nn.functional as F

from flowsr_lp import SuperResolver
from flowsr_lp.flows.srflow import SRFlow
from flowsr_lp.metrics import LPIPSUnavailable, diversity, grid_score, inf_rate, lpips

from helpers import blocky_linf, explode_at_tau, tiny_srflow


def test_inf_rate_catches_a_forced_nan(monkeypatch):
    explode_at_tau(monkeypatch, SRFlow)
    flow = tiny_srflow(4)
    res = SuperResolver(flow)
    lr = torch.rand(1, 3, 6, 6)
    outs = [res.upscale(lr, scale=4, tau=0.5, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    assert inf_rate(outs) == 0
    outs.append(res.upscale(lr, scale=4, tau=10, generator=torch.Generator().manual_seed(9)))  # explodes
    assert inf_rate(outs) == 0.25
    forced = outs[0].clone()
    forced[0, 1, 3, 3] = float("nan")
    assert inf_rate([forced, outs[1]]) == 0.5


def test_diversity_is_zero_for_a_deterministic_method():
    x = torch.rand(1, 3, 8, 8)
    assert diversity(torch.stack([x, x, x])).item() == 0
    assert diversity(torch.stack([x, torch.rand_like(x)])).item() > 0.1


def _photo(size=96):
    from skimage import data as sk

    return torch.from_numpy(sk.astronaut()[100:100 + size, 100:100 + size]).permute(2, 0, 1).float()[None] / 255


def test_grid_score_flags_independently_sampled_patches():
    hr = _photo()
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    res = SuperResolver(blocky_linf())
    sampled = res.upscale(lr, (96, 96), tau=0.8, generator=torch.Generator().manual_seed(0)).clamp(0, 1)
    mean = res.upscale(lr, (96, 96), tau=0.0).clamp(0, 1)
    smooth = F.interpolate(lr, size=(96, 96), mode="bicubic", align_corners=False).clamp(0, 1)
    g_sampled, g_mean, g_smooth, g_photo = (grid_score(x, lr).item() for x in (sampled, mean, smooth, hr))
    assert g_sampled > 10  # gray levels
    for g in (g_mean, g_smooth, g_photo):
        assert abs(g) < 1.5
    assert abs(grid_score(torch.rand(2, 3, 60, 60)).mean().item()) < 2  # per-pixel noise has no grid
    noisy = (smooth + 0.2 * torch.randn_like(smooth)).clamp(0, 1)  # noise does not hide the seams
    assert grid_score((sampled + noisy) / 2, lr).item() > 0.3 * g_sampled  # half the seams, plus noise
    shifted = grid_score(sampled[..., 1:, 1:], lr=None).item()  # off the grid the jumps are not at borders
    assert shifted < 0.2 * g_sampled


def test_lpips_with_given_alexnet_weights(tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(0)
    torch.save(alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")  # random stand-in
    a, b = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    d = lpips(a, b, tmp_path / "alexnet.pth")
    assert d.shape == (2,) and (d > 0).all()
    assert lpips(a, a, tmp_path / "alexnet.pth").abs().max() < 1e-6


def test_lpips_maps_and_distances_run_together_from_threads(tmp_path):
    """The spatial LPIPS is a model of its own: distances and maps computed at once from
    several threads (the app's workers) are each what they are alone."""
    from concurrent.futures import ThreadPoolExecutor

    from torchvision.models import alexnet

    from flowsr_lp.metrics.perceptual import lpips_map, lpips_model

    torch.manual_seed(2)
    torch.save(alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    w = tmp_path / "alexnet.pth"
    a, b = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40)
    d, m = lpips(a, b, w), lpips_map(a * 2 - 1, b * 2 - 1, w)
    assert m.shape == (1, 1, 40, 40) and torch.allclose(m.mean().double(), d[0], rtol=0.05)  # upsampled layer maps: near the mean
    assert lpips_model("cpu", w) is not lpips_model("cpu", w, spatial=True) and not lpips_model("cpu", w).spatial
    with ThreadPoolExecutor(4) as pool:
        dists = [pool.submit(lpips, a, b, w) for _ in range(8)]
        maps = [pool.submit(lpips_map, a * 2 - 1, b * 2 - 1, w) for _ in range(8)]
        assert all(torch.equal(f.result(), d) for f in dists) and all(torch.equal(f.result(), m) for f in maps)


def test_lpips_reads_weights_with_or_without_the_prefix_and_refuses_missing_layers(tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(1)
    full = alexnet(weights=None).state_dict()
    bare = {k.removeprefix("features."): v for k, v in full.items() if k.startswith("features.")}
    torch.save(full, tmp_path / "full.pth")
    torch.save(bare, tmp_path / "bare.pth")  # the backbone alone, without the prefix
    a, b = torch.rand(1, 3, 48, 48), torch.rand(1, 3, 48, 48)
    assert torch.equal(lpips(a, b, tmp_path / "full.pth"), lpips(a, b, tmp_path / "bare.pth"))
    torch.save({k: v for k, v in full.items() if not k.startswith("features.8.")}, tmp_path / "no8.pth")
    with pytest.raises(LPIPSUnavailable, match="no8.pth: AlexNet layer\\(s\\) features.8 missing"):
        lpips(a, b, tmp_path / "no8.pth")
    torch.save({**bare, "3.weight": bare["3.weight"][:, :10]}, tmp_path / "narrow.pth")
    with pytest.raises(LPIPSUnavailable, match="features.3 missing or of another shape"):
        lpips(a, b, tmp_path / "narrow.pth")
    torch.save({"classifier.1.weight": full["classifier.1.weight"]}, tmp_path / "head.pth")
    with pytest.raises(LPIPSUnavailable, match="features.0, features.3, features.6, features.8, features.10"):
        lpips(a, b, tmp_path / "head.pth")


@pytest.fixture
def no_alexnet_weights(tmp_path, monkeypatch):
    """No weights anywhere, whatever ran before: no file named, an empty torch cache
    (TORCH_HOME), no LPIPS model kept by an earlier test, and no network."""
    from urllib.error import URLError

    from torchvision.models import AlexNet_Weights

    from flowsr_lp.metrics import perceptual

    monkeypatch.delenv("FLOWSR_LP_ALEXNET", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(perceptual, "_MODELS", {})
    monkeypatch.setattr(type(AlexNet_Weights.IMAGENET1K_V1), "get_state_dict",
                        lambda *a, **k: (_ for _ in ()).throw(URLError("offline")))


def test_lpips_without_weights_says_how_to_get_them(tmp_path, no_alexnet_weights):
    with pytest.raises(LPIPSUnavailable, match="--alexnet-weights PATH"):
        lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(LPIPSUnavailable, match="no such file"):
        lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), tmp_path / "missing.pth")


def test_the_lpips_check_ignores_what_earlier_tests_loaded(monkeypatch, request):
    """What an earlier test leaves behind when the user's torch cache holds AlexNet's weights
    must not change the outcome (issue 11, item 17)."""
    from flowsr_lp.metrics import perceptual

    monkeypatch.setitem(perceptual._MODELS, ("cpu", "", False), "an LPIPS model loaded from ~/.cache/torch")
    request.getfixturevalue("no_alexnet_weights")
    assert torch.hub.get_dir().startswith(str(request.getfixturevalue("tmp_path")))
    with pytest.raises(LPIPSUnavailable, match="--alexnet-weights PATH"):
        lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
