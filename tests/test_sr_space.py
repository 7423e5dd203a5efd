"""The NTIRE SR-space diversity score, with a small LPIPS-like network, against a hand computation."""
import pytest
import torch
import torch.nn.functional as F

from flowsr_lp.metrics import sr_space_diversity


class TinyPerceptual(torch.nn.Module):
    """LPIPS-like: unit-normalised features of a fixed conv, squared difference, weighted
    channel sum, upsampled to the image size (B x 1 x H x W)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()
        self.lin = torch.rand(1, 4, 1, 1, generator=g)
        self.seen = []

    def forward(self, a, b):
        self.seen.append((a.min().item(), a.max().item(), tuple(a.shape), tuple(b.shape)))
        fa, fb = self.conv(a), self.conv(b)
        fa = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
        fb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        d = ((fa - fb) ** 2 * self.lin).sum(1, keepdim=True)
        return F.interpolate(d, size=a.shape[-2:], mode="bilinear", align_corners=False)


def test_score_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(3, 26, 23, generator=g)  # cropped to 24 x 20 at x4
    samples = (hr[None, :, :24, :20] + 0.2 * torch.randn(3, 3, 24, 20, generator=g)).clamp(0, 1)
    samples = torch.cat([samples, torch.zeros(3, 3, 2, 20)], 2)  # SR larger than the cropped HR
    net = TinyPerceptual()
    got = sr_space_diversity(samples, hr, 4, net)
    # by hand
    gt = hr[:, :24, :20] * 2 - 1
    maps = [net(samples[k:k + 1, :, :24, :20] * 2 - 1, gt[None])[0, 0] for k in range(3)]
    means = [m.mean().item() for m in maps]
    global_best = min(means)
    local_best = torch.stack(maps).min(0).values.mean().item()
    want = (global_best - local_best) / global_best * 100
    assert got == pytest.approx(want, rel=1e-6)
    assert got > 1.0  # the samples differ where they are best: a real score, not 0
    lo, hi, a_shape, b_shape = net.seen[0]
    assert lo < -0.5 and hi <= 1.0 and a_shape == (3, 3, 24, 20) and b_shape == (3, 3, 24, 20)


def test_identical_samples_score_zero_and_one_sample_is_refused():
    hr = torch.rand(3, 16, 16)
    s = hr[None].repeat(4, 1, 1, 1) * 0.9
    assert sr_space_diversity(s, hr, 4, TinyPerceptual()) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="N >= 2"):
        sr_space_diversity(s[:1], hr, 4, TinyPerceptual())


def test_spatial_lpips_map_averages_to_lpips(tmp_path):
    """lpips_map (with stand-in AlexNet weights) is a per-pixel map whose mean is the LPIPS
    distance up to the upsampling of the coarse layers' maps."""
    from torchvision.models import alexnet

    from flowsr_lp.metrics import lpips
    from flowsr_lp.metrics.perceptual import lpips_map

    torch.manual_seed(0)
    torch.save(alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    m = lpips_map(a * 2 - 1, b * 2 - 1, tmp_path / "alexnet.pth")
    assert m.shape == (2, 1, 64, 64) and (m >= 0).all()
    torch.testing.assert_close(m.flatten(1).mean(1).double(), lpips(a, b, tmp_path / "alexnet.pth"), rtol=0.1, atol=0)
    assert lpips_map(a * 2 - 1, a * 2 - 1, tmp_path / "alexnet.pth").abs().max() < 1e-6
    # and the scalar LPIPS is back to normal afterwards
    assert lpips(a, b, tmp_path / "alexnet.pth").shape == (2,)
