"""SRFlow against the official code's numbers (../shared/reference)."""
import json
import math

import pytest

from flowsr_lp import load_flow
from flowsr_lp.flows.layers import gaussian_log_p
from flowsr_lp.flows.srflow import nll_bits_per_pixel

from conftest import REFERENCE, assert_ref, load_vectors, need


pytestmark = pytest.mark.usefixtures("no_grad")


def _setup(name):
    opt = json.loads(need(REFERENCE / f"{name}.opt.json").read_text())
    taps = opt["network_G"]["flow"]["stackRRDB"]["blocks"]
    flow = load_flow(REFERENCE / f"{name}.pth", taps=taps)
    v = load_vectors(name)
    return flow, v, flow.condition(v["lr"], tuple(v["hr"].shape[-2:]))


@pytest.mark.parametrize("name,parts", [("srflow-4x-nb4-k2", 2), ("srflow-8x-nb4-k1", 3)])
def test_encode_and_decode_match_official(name, parts):
    flow, v, ctx = _setup(name)
    assert flow.config.L == parts + 1
    latent, log_p = flow.encode(v["hr"], ctx)
    assert len(latent) == parts == len(v["latents_gt"])
    for i, (a, b) in enumerate(zip(latent, v["latents_gt"])):
        assert_ref(a, b, msg=f"latent {i}")
    H, W = v["hr"].shape[-2:]
    assert_ref(log_p, -v["nll_gt"] * math.log(2) * H * W, msg="log p in nats")
    assert_ref(nll_bits_per_pixel(log_p, (H, W)), v["nll_gt"], msg="NLL in bits per pixel")
    assert_ref(log_p - gaussian_log_p(latent[-1]), v["logdet_gt"], msg="log-det")
    sr, logdet_rev = flow.decode_with_logdet(tuple(v["latents_fixed"]), ctx)
    assert_ref(sr, v["sr_from_fixed"], msg="decode of fixed latents")
    assert_ref(logdet_rev, v["logdet_reverse_fixed"], msg="reverse log-det")
    assert_ref(flow.decode(tuple(v["latents_fixed"]), ctx), v["sr_from_fixed"], msg="decode")


def test_initial_prior_and_lp_decode_match_official():
    flow, v, ctx = _setup("srflow-4x-nb4-k2")
    raw, _ = flow.encode(v["lr_bilinear_x4"], ctx)
    for a, b in zip(raw, v["initial_prior_raw"]):
        assert_ref(a, b, msg="initial prior before standardising")
    for a, b in zip(flow.initial_prior(v["lr"], ctx), v["initial_prior"]):
        assert_ref(a, b, msg="initial prior")
    assert_ref(flow.decode(tuple(v["latents_prior"]), ctx), v["sr_lp"], msg="decode of the LP latents")
