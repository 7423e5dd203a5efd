"""Full-size models built from the released configurations have exactly the released keys
and shapes (../shared/reference/*_manifest.json)."""
import json

import pytest

from flowsr_lp.flows import linf

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
