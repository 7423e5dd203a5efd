"""Latent modules against the official code's numbers, and the end-to-end LP images."""
import json

import pytest

from flowsr_lp import SuperResolver, load_flow, load_prior
from flowsr_lp.priors import linf_lp, srflow_lp

from conftest import REFERENCE, assert_ref, load_vectors, need


pytestmark = pytest.mark.usefixtures("no_grad")


@pytest.mark.parametrize("name", ["linf-patch-edsr-baseline", "linf-patch-rrdb-nb2"])
def test_linf_lp_matches_official(name):
    flow = load_flow(need(REFERENCE / f"{name}.pth"))
    prior = load_prior(REFERENCE / f"{name}-LP.pth")
    assert isinstance(prior, linf_lp.LINFLatentModule) and prior.config.dim == 32
    v = load_vectors(name)
    lr = v["inp"] * 0.5 + 0.5
    (z,) = prior((v["z_initial"],), lr)
    assert_ref(z, v["z_prior"], msg="z_prior")
    ctx = flow.condition(lr, tuple(v["hr"].shape[-2:]))
    assert_ref(flow.decode_residual((z,), ctx), v["residual_lp"], msg="residual_lp")
    # end to end: LR -> initial prior -> latent module -> inverse, through SuperResolver
    sr = SuperResolver(flow, prior).upscale(lr, tuple(v["hr"].shape[-2:]))
    assert_ref((sr - 0.5) / 0.5, v["sr_lp"], atol=1e-3, rtol=1e-3, msg="sr_lp")


@pytest.mark.parametrize("name,key,generator", [
    ("prior-edsr-baseline-latent-small", "z_edsr_latent", "edsr-baseline-latent"),
    ("prior-swin-latent-small", "z_swin_latent", "swin_latent")])
def test_alternative_generators_match_official(name, key, generator):
    prior = load_prior(need(REFERENCE / f"{name}.pth"))
    assert prior.config.generator == generator
    v = load_vectors("priors-extra")
    (z,) = prior((v["z_initial"],), v["inp"] * 0.5 + 0.5)
    assert_ref(z, v[key], msg=key)


def test_srflow_lp_matches_official():
    opt = json.loads(need(REFERENCE / "srflow-4x-nb4-k2.opt.json").read_text())
    flow = load_flow(REFERENCE / "srflow-4x-nb4-k2.pth", taps=opt["network_G"]["flow"]["stackRRDB"]["blocks"])
    prior = load_prior(REFERENCE / "srflow-4x-nb4-k2-LP.pth")
    assert isinstance(prior, srflow_lp.SRFlowLatentModule) and prior.latent_channels == (6, 96)
    v = load_vectors("srflow-4x-nb4-k2")
    out = prior(tuple(v["initial_prior"]), v["lr"])
    for a, b in zip(out, v["latents_prior"]):
        assert_ref(a, b, msg="latents_prior")
    sr = SuperResolver(flow, prior).upscale(v["lr"], tuple(v["hr"].shape[-2:]))
    assert_ref(sr, v["sr_lp"], atol=1e-3, rtol=1e-3, msg="sr_lp")


def _manifest(key):
    return json.loads(need(REFERENCE / ("srflow_lp_manifest.json" if key.startswith("srflow") else
                                        "linf_lp_manifest.json")).read_text())[key]


@pytest.mark.parametrize("key,model", [(k, lambda c=c: linf_lp.LINFLatentModule(c)) for k, c in linf_lp.RELEASED.items()]
                         + [(k, lambda c=c: srflow_lp.SRFlowLatentModule(c)) for k, c in srflow_lp.RELEASED.items()])
def test_full_size_prior_manifests(key, model):
    got = {k: list(v.shape) for k, v in model().state_dict().items()}
    assert got == _manifest(key)
