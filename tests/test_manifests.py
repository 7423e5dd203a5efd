"""Full-size models built from the released configurations have exactly the released keys
and shapes (../shared/reference/*_manifest.json)."""
import json

import pytest

from flowsr_lp.flows import linf, srflow

from conftest import REFERENCE, need


def manifest(name):
    return json.loads(need(REFERENCE / name).read_text())


def shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(linf.RELEASED))
def test_linf_released_configs_match_manifest(name):
    expected = manifest("linf_lp_manifest.json")[name]
    got = shapes(linf.LINF(linf.RELEASED[name]))
    assert sorted(got) == sorted(expected)
    assert got == expected


@pytest.mark.parametrize("name", sorted(srflow.RELEASED))
def test_srflow_released_configs_match_manifest(name):
    expected = manifest("srflow_lp_manifest.json")[name]
    model = srflow.SRFlow(srflow.RELEASED[name])
    got = shapes(model)
    assert sorted(got) == sorted(expected)
    assert got == expected
    if name.endswith("4x"):
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(39.5e6, rel=0.01)


@pytest.mark.parametrize("name", sorted(srflow.RELEASED))
def test_srflow_config_is_inferred_from_released_shapes(name):
    """nb, K, L, scale, widths come from key names and shapes; taps default to the released."""
    import torch

    sd = {k: torch.empty(v) for k, v in manifest("srflow_lp_manifest.json")[name].items()}
    assert srflow.config_from_state_dict(sd) == srflow.RELEASED[name]
