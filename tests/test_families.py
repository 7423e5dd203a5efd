"""The family registry (issue 21, item 5): one table tells the loader every model family, its
config, its class and its official layout; SRFlow's taps default is the entry's, and logged."""
import dataclasses
import json

import pytest
import torch

from flowsr_lp import CheckpointError, load_flow, save_flow
from flowsr_lp.checkpoints import build_model, read_checkpoint
from flowsr_lp.families import registry
from flowsr_lp.families.family import Family, Official
from flowsr_lp.flows.linf import LINF, LINFConfig
from flowsr_lp.flows.srflow import SRFlow, SRFlowConfig
from flowsr_lp.hub.registry import TABLE

from conftest import REFERENCE, need
from helpers import tiny_linf

#: every official reference file and the family that must claim it
REFERENCE_FAMILIES = {
    "linf-edsr-baseline.pth": "linf", "linf-patch-edsr-baseline.pth": "linf", "linf-rdn-small.pth": "linf",
    "linf-swinir-small.pth": "linf", "linf-patch-rrdb-nb2.pth": "linf",
    "srflow-4x-nb4-k2.pth": "srflow", "srflow-8x-nb4-k1.pth": "srflow",
    "hcflow-x4-small.pth": "hcflow", "hcflow-x8-small.pth": "hcflow",
    "linf-patch-edsr-baseline-LP.pth": "linf-lp", "linf-patch-rrdb-nb2-LP.pth": "linf-lp",
    "prior-edsr-baseline-latent-small.pth": "linf-lp", "prior-swin-latent-small.pth": "linf-lp",
    "srflow-4x-nb4-k2-LP.pth": "srflow-lp",
}


@pytest.mark.parametrize("name", sorted(REFERENCE_FAMILIES))
def test_exactly_one_family_claims_each_official_file(name):
    ck, meta = read_checkpoint(need(REFERENCE / name))
    assert meta is None
    claims = [f.name for f in registry.FAMILIES if f.detect is not None and f.detect(ck)]
    assert claims == [REFERENCE_FAMILIES[name]]


def test_families_are_unique_and_complete():
    keys = [(f.kind, f.name) for f in registry.FAMILIES]
    assert len(keys) == len(set(keys))
    for f in registry.FAMILIES:
        assert f.kind in ("flow", "prior") and dataclasses.is_dataclass(f.config)
        assert (f.detect is None) == (f.read is None), f.name
    with pytest.raises(ValueError, match="unknown flow family 'glow'.*'srflow'"):
        registry.family("flow", "glow")


def test_every_hub_entry_names_a_registered_family():
    for raw in json.loads(TABLE.read_text())["models"]:
        kind = "prior" if raw["family"].endswith("-lp") else "flow"
        assert registry.family(kind, raw["family"]).kind == kind


def test_srflow_taps_default_is_the_entry_s_and_logged(caplog):
    cfg = {"scale": 8, "nf": 4, "nb": 8, "gc": 2, "K": 1, "hidden_channels": 4}
    with caplog.at_level("INFO", logger="flowsr_lp"):
        flow = build_model("flow", "srflow", cfg)
    assert flow.config.taps == (1, 3, 5, 7)
    assert "srflow config without taps" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="flowsr_lp"):
        assert build_model("flow", "srflow", {**cfg, "taps": [0, 2, 4, 6]}).config.taps == (0, 2, 4, 6)
    assert "without taps" not in caplog.text


def test_loading_a_state_dict_logs_the_assumed_taps(tmp_path, caplog):
    torch.manual_seed(0)
    flow = SRFlow(SRFlowConfig(scale=8, nf=4, nb=8, gc=2, K=1, taps=(1, 3, 5, 7), hidden_channels=4))
    torch.save(flow.state_dict(), tmp_path / "s.pth")
    with caplog.at_level("INFO", logger="flowsr_lp"):
        assert load_flow(tmp_path / "s.pth").config.taps == (1, 3, 5, 7)
    assert "taps = [1, 3, 5, 7] (the released x8 models'" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="flowsr_lp"):
        assert load_flow(tmp_path / "s.pth", taps=[0, 2, 4, 6]).config.taps == (0, 2, 4, 6)
    assert "taps" not in caplog.text


def test_taps_are_refused_for_families_without_them(tmp_path):
    flow = tiny_linf(3)
    torch.save({"model": {"name": "linf-patch", "args": {"encoder_spec": {"name": "edsr-baseline",
               "args": flow.config.encoder_args}, "patch_size": 3, "flow_layers": 3, "hidden_dim": 16},
               "sd": flow.state_dict()}}, tmp_path / "l.pth")
    with pytest.raises(CheckpointError, match="RRDB taps do not apply to linf checkpoints"):
        load_flow(tmp_path / "l.pth", taps=[0])


def test_a_new_family_is_one_entry(tmp_path, monkeypatch):
    """A layout no family knows is refused; registering one Family makes load_flow read it,
    and the project format then round-trips it under the family's name."""
    flow = tiny_linf(1)
    torch.save({"toy-weights": flow.state_dict(), "toy-config": flow.config.to_dict()}, tmp_path / "toy.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_flow(tmp_path / "toy.pth")

    class Toy(LINF):
        kind = "toy"

        def __init__(self, config):
            super().__init__(config)
            self.kind = "toy"

    toy = Family("toy", "flow", LINFConfig, Toy, detect=lambda ck: isinstance(ck, dict) and "toy-weights" in ck,
                 read=lambda ck: Official(LINFConfig.from_dict(ck["toy-config"]), ck["toy-weights"], "a toy flow"))
    monkeypatch.setattr(registry, "FAMILIES", registry.FAMILIES + (toy,))
    loaded = load_flow(tmp_path / "toy.pth")
    assert isinstance(loaded, Toy) and loaded.config == flow.config
    for a, b in zip(flow.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    again = load_flow(save_flow(loaded, tmp_path / "toy.safetensors"))
    assert isinstance(again, Toy)
