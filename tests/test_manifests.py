"""Full-size models built from the released configurations have exactly the released keys
and shapes (../shared/reference/*_manifest.json)."""
import inspect
import json

import pytest
import torch

from flowsr_lp import load_flow
from flowsr_lp.flows import linf, srflow
from flowsr_lp.nets import rdn, swinir

from conftest import REFERENCE, need


def manifest(name):
    return json.loads(need(REFERENCE / name).read_text())


def shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


#: parameters of the released LINF encoders' full models (README of ../shared/reference)
LINF_PARAMETERS = {"linf-rdn": 22.7e6, "linf-swinir": 12.3e6}


@pytest.mark.parametrize("name", sorted(linf.RELEASED))
def test_linf_released_configs_match_manifest(name):
    expected = manifest("linf_lp_manifest.json")[name]
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = linf.LINF(linf.RELEASED[name])
    got = shapes(model)
    assert sorted(got) == sorted(expected)
    assert got == expected
    if name in LINF_PARAMETERS:
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(LINF_PARAMETERS[name], rel=0.01)


def meta_state_dict(shapes: dict) -> dict:
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


@pytest.mark.parametrize("name, module", [("linf-rdn", rdn), ("linf-swinir", swinir)])
def test_linf_encoder_sizes_are_read_off_released_shapes(name, module):
    """Released RDN / SwinIR checkpoints declare no sizes: the weights tell them all."""
    sd = meta_state_dict(manifest("linf_lp_manifest.json")[name])
    found = module.args_from_state_dict({k[8:]: v for k, v in sd.items() if k.startswith("encoder.")})
    encoder = linf.ENCODERS[linf.RELEASED[name].encoder]
    defaults = {k: p.default for k, p in inspect.signature(encoder).parameters.items()}
    assert sorted(found) == sorted(defaults)
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()} == found


def official_linf(name: str, sd: dict) -> dict:
    """A checkpoint as LINF's training code writes it, for a released configuration."""
    cfg = linf.RELEASED[name]
    args = {"encoder_spec": {"name": cfg.encoder, "args": {"no_upsampling": True}},
            "imnet_spec": {"name": "flow", "args": {"name": "flow"}},
            "flow_layers": 10, "num_layer": 3, "hidden_dim": 256}
    if cfg.patch_size != 1:
        args["patch_size"] = cfg.patch_size
    return {"model": {"name": "linf" if cfg.patch_size == 1 else "linf-patch", "args": args, "sd": sd},
            "epoch": 1000}


@pytest.mark.parametrize("name", sorted(linf.RELEASED))
def test_load_flow_builds_released_linf_from_official_dict(name, tmp_path):
    """Each released architecture loads from a random, manifest-shaped official file."""
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randint(0, 10, v, generator=gen) if k.endswith("relative_position_index")
          else torch.randn(v, generator=gen) for k, v in manifest("linf_lp_manifest.json")[name].items()}
    torch.save(official_linf(name, sd), tmp_path / "official.pth")
    flow = load_flow(tmp_path / "official.pth")
    assert flow.config.encoder == linf.RELEASED[name].encoder
    assert flow.config.patch_size == linf.RELEASED[name].patch_size
    got = flow.state_dict()
    assert sorted(got) == sorted(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.mark.parametrize("name", sorted(srflow.RELEASED))
def test_srflow_released_configs_match_manifest(name):
    expected = manifest("srflow_lp_manifest.json")[name]
    with torch.device("meta"):  # shapes only
        model = srflow.SRFlow(srflow.RELEASED[name])
    got = shapes(model)
    assert sorted(got) == sorted(expected)
    assert got == expected
    if name.endswith("4x"):
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(39.5e6, rel=0.01)


@pytest.mark.parametrize("name", sorted(srflow.RELEASED))
def test_srflow_config_is_inferred_from_released_shapes(name):
    """nb, K, L, scale, widths come from key names and shapes; taps default to the released."""
    sd = meta_state_dict(manifest("srflow_lp_manifest.json")[name])
    assert srflow.config_from_state_dict(sd) == srflow.RELEASED[name]
