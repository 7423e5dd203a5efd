"""Tiled latent-module inference: exact where the network allows, seamless, same shapes."""
import torch
from torch import nn

from flowsr_lp.priors.tiling import predict_latent, tile_starts, tiled_map

from helpers import tiny_linf_prior


def test_tiles_cover_the_map():
    assert tile_starts(100, 32, 24) == [0, 24, 48, 68]
    assert tile_starts(20, 32, 24) == [0]


def test_blending_weights_sum_to_one():
    x = torch.randn(2, 3, 45, 70)
    torch.testing.assert_close(tiled_map(lambda t: t, [x], tile=16, overlap=6), x)


def test_translation_equivariant_network_is_reproduced_exactly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 5, 3, padding=1)).eval()
    x = torch.randn(1, 4, 50, 37)
    with torch.no_grad():
        whole = net(x)
        tiled = tiled_map(net, [x], tile=16, overlap=4, margin=2)  # margin >= receptive radius
        no_margin = tiled_map(net, [x], tile=16, overlap=0, margin=0)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    assert (no_margin - whole).abs().max() > 1e-3  # without context, tile borders differ


def test_unet_prior_tiles_without_seams():
    prior = tiny_linf_prior("unet")
    z0, lr = torch.randn(1, 27, 96, 80), torch.rand(1, 3, 144, 120)
    with torch.no_grad():
        whole = predict_latent(prior, (z0,), lr)[0]
        tiled = predict_latent(prior, (z0,), lr, max_pixels=0, tile=32, overlap=8, margin=16)[0]
        crude = predict_latent(prior, (z0,), lr, max_pixels=0, tile=32, overlap=0, margin=0)[0]
    assert tiled.shape == whole.shape
    err, crude_err = (tiled - whole).abs().mean(1)[0], (crude - whole).abs().mean(1)[0]
    assert err.mean() < 0.5 * crude_err.mean()
    # a seam would put the error on the tile borders (rows/columns 24, 48, 72 and 32 + ...)
    border = torch.zeros_like(err, dtype=torch.bool)
    for s in (24, 32, 48, 56, 72, 80):
        border[s - 1:s + 1] = True
        border[:, s - 1:s + 1] = True
    assert err[border].mean() < 1.5 * err[~border].mean()
    assert crude_err[border].mean() > 1.5 * crude_err[~border].mean()
