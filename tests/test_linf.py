"""LINF behaviour beyond the reference vectors: invertibility at awkward sizes, chunking,
padding, sampling, batching, gradients."""
import pytest
import torch

from flowsr_lp.flows.linf import pixel_centres

from helpers import tiny_linf


@pytest.mark.parametrize("patch_size", [1, 3])
@pytest.mark.parametrize("size", [(12, 18), (13, 17), (14, 16), (31, 9)])
def test_encode_decode_round_trip(patch_size, size):
    flow = tiny_linf(patch_size)
    lr = torch.rand(2, 3, 5, 6)
    hr = torch.rand(2, 3, *size)
    with torch.no_grad():
        ctx = flow.condition(lr, size)
        latent, log_p = flow.encode(hr, ctx)
        back = flow.decode(latent, ctx)
    hq, wq = -(-size[0] // patch_size), -(-size[1] // patch_size)
    assert latent[0].shape == (2, 3 * patch_size**2, hq, wq)
    assert log_p.shape == (2,) and torch.isfinite(log_p).all()
    assert back.shape == hr.shape
    assert (back - hr).abs().max() < 1e-4


def test_chunking_and_cache_do_not_change_results():
    flow = tiny_linf(3)
    lr, hr = torch.rand(1, 3, 7, 9), torch.rand(1, 3, 20, 25)
    with torch.no_grad():
        ctx = flow.condition(lr, (20, 25))
        (z,), lp = flow.encode(hr, ctx)
        sr = flow.decode((z * 0.3,), ctx)
        flow.chunk_queries, flow.cache_bytes = 5, 0  # tiny chunks, nothing cached
        ctx2 = flow.condition(lr, (20, 25))
        assert ctx2.cond is None
        (z2,), lp2 = flow.encode(hr, ctx2)
        sr2 = flow.decode((z * 0.3,), ctx2)
    torch.testing.assert_close(z2, z, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lp2, lp, atol=1e-3, rtol=1e-6)
    torch.testing.assert_close(sr2, sr, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("H", [30, 31, 32])
def test_overhanging_patch_rows_use_extrapolated_centres(H):
    flow = tiny_linf(3)
    rows = flow.query_coords((H, 9))[:, 0, 0]
    assert len(rows) == -(-H // 3)  # ceil(H / 3) patch rows, never a spare one
    step = rows[1:] - rows[:-1]
    torch.testing.assert_close(step, torch.full_like(step, 6 / H))
    # the centre of the last patch row is pixel 3k+1 (extrapolated if outside the image)
    expected = -1 + 1 / H + 2 / H * (3 * (len(rows) - 1) + 1)
    assert abs(rows[-1].item() - expected) < 1e-6
    assert rows[-1] > 0.8  # upstream would query the image centre (0) here when H % 3 == 1


def test_pixel_centres_formula_is_float32_exact():
    c = pixel_centres(48)
    assert c.dtype == torch.float32 and len(c) == 48
    assert abs(c[0].item() + 1 + 1 / 48) < 2 / 48 and abs(c[-1].item() - (1 - 1 / 48)) < 1e-6


def test_sampling_uses_the_explicit_generator():
    flow = tiny_linf(3)
    with torch.no_grad():
        ctx = flow.condition(torch.rand(1, 3, 8, 8), (24, 24))
    a = flow.sample_latent(ctx, 0.8, torch.Generator().manual_seed(1))[0]
    b = flow.sample_latent(ctx, 0.8, torch.Generator().manual_seed(1))[0]
    c = flow.sample_latent(ctx, 0.8, torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.std().item() - 0.8) < 0.1
    assert flow.sample_latent(ctx, 0.0, torch.Generator())[0].abs().max() == 0


def test_batch_items_are_independent():
    flow = tiny_linf(3)
    lr, hr = torch.rand(2, 3, 6, 7), torch.rand(2, 3, 15, 20)
    with torch.no_grad():
        (z,), lp = flow.encode(hr, flow.condition(lr, (15, 20)))
        (z1,), lp1 = flow.encode(hr[1:], flow.condition(lr[1:], (15, 20)))
    torch.testing.assert_close(z[1:], z1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lp[1:], lp1, atol=1e-3, rtol=1e-5)


def test_decode_is_differentiable_in_the_latent():
    flow = tiny_linf(3)
    with torch.no_grad():
        ctx = flow.condition(torch.rand(1, 3, 6, 6), (18, 18))
    z = torch.zeros(1, 27, 6, 6, requires_grad=True)
    flow.decode((z,), ctx).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_tau_zero_is_the_conditional_mean_and_beats_noise_on_log_p():
    flow = tiny_linf(3)
    with torch.no_grad():
        ctx = flow.condition(torch.rand(1, 3, 6, 6), (18, 18))
        mean = flow.decode(flow.sample_latent(ctx, 0.0), ctx)
        noisy = flow.decode(flow.sample_latent(ctx, 1.0, torch.Generator().manual_seed(0)), ctx)
        _, lp_mean = flow.encode(mean, ctx)
        _, lp_noisy = flow.encode(noisy, ctx)
    assert lp_mean > lp_noisy  # the mode of a Gaussian is its most likely point


@pytest.mark.parametrize("patch_size", [1, 3])
@pytest.mark.parametrize("window", [(0, 0, 9, 12), (4, 7, 9, 9), (10, 2, 14, 20)])
def test_a_window_is_the_same_as_cropping_the_whole_image(patch_size, window):
    flow = tiny_linf(patch_size)
    lr, H, W = torch.rand(2, 3, 8, 9), 24, 27
    top, left, h, w = window
    hr = torch.rand(2, 3, H, W)
    with torch.no_grad():
        full = flow.condition(lr, (H, W))
        win = flow.condition(lr, (H, W), window)
        assert win.out_size == (h, w)
        z_win = flow.sample_latent(win, 0.7, torch.Generator().manual_seed(0))
        back = flow.decode(flow.encode(hr[..., top:top + h, left:left + w], win)[0], win)
        torch.testing.assert_close(back, hr[..., top:top + h, left:left + w], atol=1e-4, rtol=1e-4)
        if top % patch_size == 0 and left % patch_size == 0:  # aligned: the same queries as the full grid
            ps = patch_size
            z_full = torch.zeros(flow.latent_shapes(full)[0])
            z_full[..., top // ps: top // ps + z_win[0].shape[-2], left // ps: left // ps + z_win[0].shape[-1]] = z_win[0]
            sr_full = flow.decode((z_full,), full)[..., top:top + h, left:left + w]
            sr_win = flow.decode(z_win, win)
            if h % ps == 0 and w % ps == 0:
                torch.testing.assert_close(sr_win, sr_full, atol=1e-5, rtol=1e-5)
            z0_full = flow.initial_prior(lr, full)[0]
            z0_win = flow.initial_prior(lr, win)[0]
            torch.testing.assert_close(z0_win, z0_full[..., top // ps: top // ps + z0_win.shape[-2],
                                                       left // ps: left // ps + z0_win.shape[-1]], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        flow.condition(lr, (H, W), (20, 0, 9, 9))
