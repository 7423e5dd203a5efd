"""LINF against the official code's numbers (../shared/reference)."""
import pytest
import torch

from flowsr_lp import load_flow
from flowsr_lp.flows.linf import to_patches

from conftest import REFERENCE, assert_ref, load_vectors, need

PATCH_MODELS = ["linf-patch-edsr-baseline", "linf-patch-rrdb-nb2"]


pytestmark = pytest.mark.usefixtures("no_grad")


def _setup(name):
    flow = load_flow(need(REFERENCE / f"{name}.pth"))
    v = load_vectors(name)
    lr = v["inp"] * 0.5 + 0.5
    ctx = flow.condition(lr, tuple(v["hr"].shape[-2:]))
    return flow, v, lr, ctx


@pytest.mark.parametrize("name", PATCH_MODELS)
def test_patch_model_matches_official(name):
    flow, v, lr, ctx = _setup(name)
    assert flow.kind == "linf-patch"
    assert_ref(ctx.coord, v["coord"][0], msg="patch-centre coordinates")
    assert_ref(flow.encoder(v["inp"]), v["feat"], msg="encoder features")
    assert_ref(flow._bilinear_base(ctx), v["bilinear_up"], msg="bilinear term")
    # HR -> residual patches -> latent and per-query log p
    patches = to_patches(v["gt_residual"], 3, ctx.grid_size)
    assert_ref(patches, v["gt_patch"], msg="residual patches")
    (z,), log_p = flow.encode(v["hr"][None], ctx)
    assert_ref(z, v["z_gt"], msg="z_gt")
    assert log_p.shape == (1,)
    _, log_p_map = flow.encode_patches(v["gt_patch"], ctx)
    assert_ref(log_p_map.flatten(), v["log_p_gt"], msg="per-query log p")
    assert_ref(log_p, v["log_p_gt"].sum().view(1), msg="log p summed over the patch grid")
    # inverse of fixed latents, before cropping
    assert_ref(flow.decode_residual((v["z_fixed"],), ctx), v["residual_from_z_fixed"], msg="residual_from_z_fixed")
    assert_ref(flow.decode_residual((v["z_prior"],), ctx), v["residual_lp"], msg="residual_lp")
    # a full decode is the cropped residual plus the bilinear term, in [0, 1]
    sr = flow.decode((v["z_prior"],), ctx)
    assert_ref((sr - 0.5) / 0.5, v["sr_lp"], msg="decoded image from z_prior")


@pytest.mark.parametrize("name", PATCH_MODELS)
def test_initial_prior_matches_official(name):
    flow, v, lr, ctx = _setup(name)
    (z0,) = flow.initial_prior(lr, ctx)
    assert_ref(z0, v["z_initial"], msg="initial prior latent")
    _, log_p0 = flow.encode_patches(v["initial_prior_patch"], ctx)
    assert_ref(log_p0.flatten(), v["log_p_initial"], msg="initial prior log p")


@pytest.mark.parametrize("name", ["linf-edsr-baseline", "linf-rdn-small", "linf-swinir-small"])
def test_pixel_model_matches_official(name):
    flow, v, lr, ctx = _setup(name)
    H, W = v["hr"].shape[-2:]
    assert flow.kind == "linf"
    assert_ref(ctx.coord, v["coord"][0], msg="pixel-centre coordinates (scale 3 x 3.5)")
    assert_ref(flow.encoder(v["inp"]), v["feat"], msg="encoder features")
    (z,), log_p = flow.encode(v["gt"] * 0.5 + 0.5, ctx)
    assert z.shape == (1, 3, H, W)
    assert_ref(log_p, v["log_p_gt"].sum().view(1), msg="log p")
    _, log_p_map = flow.encode_patches(v["gt"] - flow._bilinear_base(ctx), ctx)
    assert_ref(log_p_map.flatten(), v["log_p_gt"], msg="per-pixel log p")
    sr0 = flow.decode((torch.zeros(1, 3, H, W),), ctx)
    assert_ref((sr0 - 0.5) / 0.5, v["sr_tau0"], msg="tau = 0 output")
    z_unit = (v["z_unit"] * v["tau"]).view(H, W, 3).permute(2, 0, 1)[None]
    sr = flow.decode((z_unit,), ctx)
    assert_ref((sr - 0.5) / 0.5, v["sr_from_z_unit_times_tau"], msg="decode of z_unit * tau")
