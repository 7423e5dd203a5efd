"""HCFlow against vectors from the official code (../shared/reference, "HCFlow, exactly"),
and the released checkpoints' layouts (manifests) built from the config read off their keys."""
import json

import pytest
import torch

import flowsr_lp
from flowsr_lp.flows.hcflow import RELEASED, HCFlow, HCFlowConfig, config_from_state_dict, dirac_log_p
from flowsr_lp.hub import registry
from flowsr_lp.hub.resolve import status

from conftest import REFERENCE, assert_ref, load_vectors, need
from hub_server import home, ref_bytes, server  # noqa: F401 (fixtures)

SMALL = {"x4": dict(scale=4, after_split=(2, 2)), "x8": dict(scale=8, after_split=(2, 2, 2))}


def _load(name):
    return flowsr_lp.load_flow(need(REFERENCE / f"hcflow-{name}-small.pth"))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_config_is_read_off_the_keys(name):
    v = load_vectors(f"hcflow-{name}-small")
    opt = v["config"]["network_G"]["flowDownsampler"]
    split = opt["splitOff"]
    flow = _load(name)
    assert isinstance(flow, HCFlow) and flow.kind == "hcflow" and flow.fixed_scale == v["config"]["scale"]
    assert flow.config == HCFlowConfig(scale=v["config"]["scale"], K=opt["K"], after_split=tuple(split["after_flowstep"]),
                                       hidden_channels=opt["hidden_channels"], split_hidden_channels=split["hidden_channels"],
                                       rrdb_nb=tuple(split["RRDB_nb"]), nf=split["RRDB_nf"], gc=split["RRDB_gc"])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_vector_matches_the_official_code(name, no_grad):
    v = load_vectors(f"hcflow-{name}-small")
    flow = _load(name)
    latent, fake_lr, log_det = flow.forward_pass(v["hr"])
    assert_ref(fake_lr, v["fake_lr"], msg="fake_lr")
    assert len(latent) == len(v["eps_forward"])
    for i, (got, want) in enumerate(zip(latent, v["eps_forward"])):
        assert_ref(got, want, msg=f"eps_forward[{i}]")
    assert_ref(log_det, v["log_det"], msg="log_det")
    assert_ref(dirac_log_p(v["lr"], fake_lr), v["log_p_dirac_lr"], msg="log_p_dirac_lr")

    ctx = flow.condition(v["lr"])
    enc, log_p = flow.encode(v["hr"], ctx)  # log p(hr | lr) in nats, the Dirac term included
    assert_ref(log_p, v["log_p"], msg="log_p")
    for i, (got, want) in enumerate(zip(enc, v["eps_forward"])):
        assert_ref(got, want, msg=f"encode eps[{i}]")
    assert_ref(flow.decode(tuple(0.8 * e for e in v["eps_sample"]), ctx), v["sr_tau0.8"], msg="sr_tau0.8")
    assert_ref(flow.decode(tuple(torch.zeros_like(e) for e in v["eps_sample"]), ctx), v["sr_tau0"], msg="sr_tau0")
    # the reverse pass from the fake LR with the encoded eps (tau 1) gives the HR back
    rec = flow.decode(tuple(v["eps_forward"]), flow.condition(v["fake_lr"]))
    assert_ref(rec, v["reconstruction"], msg="reconstruction")
    assert_ref(rec, v["hr"], msg="reconstruction vs hr")


def test_a_wrong_convention_misses_by_far(no_grad):
    """The vectors can fail: swapping the coarser features' order in the x8 condition (the one
    convention the x4 vectors cannot see) moves the finest eps and log p far off."""
    v = load_vectors("hcflow-x8-small")
    flow = _load("x8")
    feats = flow.flow.level0_condFlow.conv_first.weight
    with torch.no_grad():
        swapped = torch.cat([feats[:, :6], feats[:, 6 + 32:], feats[:, 6:6 + 32]], 1)
        feats.copy_(swapped)
    latent, _, log_det = flow.forward_pass(v["hr"])
    assert (latent[-1] - v["eps_forward"][-1]).abs().max() > 0.1
    assert (log_det - v["log_det"]).abs().item() > 100


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_checkpoints_load_by_shape(name):
    """The config inferred from the released keys and shapes builds exactly the manifest's
    key -> shape table (same order), with its parameter count."""
    m = json.loads(need(REFERENCE / f"{name}.manifest.json").read_text())
    sd = {k: torch.empty(shape, device="meta") for k, shape in m["keys"].items()}
    cfg = config_from_state_dict(sd)
    assert cfg == RELEASED[name]
    net = m["config"]["network_G"]["flowDownsampler"]
    assert (cfg.scale, cfg.L, cfg.K, list(cfg.after_split), list(cfg.rrdb_nb)) == \
        (m["config"]["scale"], net["L"], net["K"], net["splitOff"]["after_flowstep"], net["splitOff"]["RRDB_nb"])
    with torch.device("meta"):
        model = HCFlow(cfg)
    assert {k: list(t.shape) for k, t in model.state_dict().items()} == m["keys"]
    assert list(model.state_dict()) == list(m["keys"])
    assert sum(p.numel() for p in model.parameters()) == m["parameters"]
    assert model.latent_channels == ((21, 6) if cfg.scale == 4 else (45, 12, 6))


def test_registry_entries_are_the_release_files_trusted_on_first_use(home, server, monkeypatch):
    release = "https://github.com/JingyunLiang/HCFlow/releases/download/v0.0/"
    for name, file in (("hcflow-df2k-4x", "SR_DF2K_X4_HCFlow++.pth"), ("hcflow-celeba-8x", "SR_CelebA_X8_HCFlow++.pth")):
        e = registry.lookup(name)
        assert (e.family, e.kind, e.checksum, e.file, e.urls) == ("hcflow", "flow", None, file, (release + file,))
        assert e.license.startswith("Apache-2.0")
    # served under the release's name by a mirror: downloaded, its sha256 recorded, loaded
    server.files["/m/SR_DF2K_X4_HCFlow++.pth"] = need(REFERENCE / "hcflow-x4-small.pth").read_bytes()
    monkeypatch.setenv("FLOWSR_LP_MIRROR", f"{server.url}/m/")
    assert flowsr_lp.load_flow("hcflow-df2k-4x").fixed_scale == 4
    assert status(registry.lookup("hcflow-df2k-4x"))["verified"] == "unverified (sha256 recorded)"
