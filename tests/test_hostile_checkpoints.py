"""Hostile checkpoints (issue 11, items 5 and 6): declared sizes are checked against the
weights' shapes before anything is allocated, and malformed fields are one-line
CheckpointErrors, never an allocator message or a traceback."""
import json
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from flowsr_lp import CheckpointError, load_flow, load_prior, save_flow, save_prior
from flowsr_lp.checkpoints import FORMAT

from helpers import tiny_linf, tiny_linf_prior


def _project_file(tmp_path, module, save, **config_changes):
    """A project-format file whose declared config is edited but whose weights are not."""
    path = save(module, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        record = json.loads(f.metadata()[FORMAT])
    for k, v in config_changes.items():
        node, *rest = k.split(".")
        (record["config"][node] if rest else record["config"]).__setitem__(rest[0] if rest else node, v)
    save_file(load_file(path), str(path), metadata={FORMAT: json.dumps(record)})
    return path


def _refused(load, path, match=None):
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=match) as info:
        load(path)
    assert time.perf_counter() - t0 < 20, "the check must come before any large allocation"
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


ABSURD_FLOW = [("hidden_dim", 10**9), ("hidden_dim", 2**40), ("flow_layers", 10**8), ("num_layer", 10**8),
               ("encoder_args.n_feats", 10**9), ("encoder_args.n_resblocks", 10**7), ("hidden_dim", -16),
               ("hidden_dim", "wide"), ("flow_layers", None), ("patch_size", 10**5), ("hidden_dim", 1e300)]


@pytest.mark.parametrize("key,value", ABSURD_FLOW, ids=[f"{k}={v}" for k, v in ABSURD_FLOW])
def test_absurd_declared_flow_sizes_are_refused_before_allocation(tmp_path, key, value):
    path = _project_file(tmp_path, tiny_linf(3), save_flow, **{key: value})
    _refused(load_flow, path)


ABSURD_PRIOR = [("dim", 10**9), ("depth", 10**6), ("depth", 60), ("in_chans", 10**9), ("dim", 0)]


@pytest.mark.parametrize("key,value", ABSURD_PRIOR, ids=[f"{k}={v}" for k, v in ABSURD_PRIOR])
def test_absurd_declared_prior_sizes_are_refused_before_allocation(tmp_path, key, value):
    path = _project_file(tmp_path, tiny_linf_prior(), save_prior, **{key: value})
    _refused(load_prior, path)


def _official_linf(tmp_path, **args):
    flow = tiny_linf(3)
    spec_args = {"encoder_spec": {"name": "edsr-baseline", "args": flow.config.encoder_args}, "patch_size": 3,
                 "flow_layers": 3, "num_layer": 3, "hidden_dim": 16}
    spec_args.update(args)
    path = tmp_path / "official.pth"
    torch.save({"model": {"name": "linf-patch", "args": spec_args, "sd": flow.state_dict()}}, path)
    return path


def test_the_official_layout_loads_when_consistent(tmp_path):
    assert load_flow(_official_linf(tmp_path)).config.hidden_dim == 16


OFFICIAL_BAD = {
    "hidden_dim-huge": dict(hidden_dim=10**9),
    "flow_layers-huge": dict(flow_layers=10**8),
    "num_layer-huge": dict(num_layer=10**9),
    "hidden_dim-text": dict(hidden_dim="wide"),
    "args-a-list": None,
    "encoder_spec-a-string": dict(encoder_spec="edsr-baseline"),
    "encoder-args-a-list": dict(encoder_spec={"name": "edsr-baseline", "args": [1, 2]}),
    "n_resblocks-huge": dict(encoder_spec={"name": "edsr-baseline", "args": {"n_resblocks": 10**7, "n_feats": 8}}),
}


@pytest.mark.parametrize("case", sorted(OFFICIAL_BAD))
def test_malformed_official_linf_fields(tmp_path, case):
    if OFFICIAL_BAD[case] is None:
        path = tmp_path / "official.pth"
        torch.save({"model": {"name": "linf-patch", "args": [1, 2, 3], "sd": tiny_linf(3).state_dict()}}, path)
    else:
        path = _official_linf(tmp_path, **OFFICIAL_BAD[case])
    _refused(load_flow, path)


@pytest.mark.parametrize("sd", [[1, 2, 3], {"a": 1}, "weights", {1: torch.zeros(1)}], ids=["list", "numbers", "str", "int-keys"])
def test_weights_that_are_not_a_state_dict(tmp_path, sd):
    path = tmp_path / "official.pth"
    torch.save({"model": {"name": "linf-patch", "args": {"encoder_spec": {"name": "edsr-baseline"}}, "sd": sd}}, path)
    _refused(load_flow, path)


def _official_prior(tmp_path, **changes):
    prior = tiny_linf_prior()
    spec = {"name": "unet", "args": {"dim": 8, "depth": 3}, "sd": prior.state_dict()}
    spec.update(changes)
    path = tmp_path / "prior.pth"
    torch.save({"prior_model": spec}, path)
    return path


def test_the_official_prior_layout_loads_when_consistent(tmp_path):
    assert load_prior(_official_prior(tmp_path)).config.dim == 8


PRIOR_BAD = {"args-a-list": dict(args=[8, 3]), "args-a-string": dict(args="dim=8"),
             "dim-huge": dict(args={"dim": 10**9, "depth": 3}), "depth-huge": dict(args={"dim": 8, "depth": 10**6}),
             "sd-missing": dict(sd=None), "name-unknown": dict(name="transformer"),
             "prior-keys-missing": dict(sd={k: v for k, v in tiny_linf_prior().state_dict().items()
                                            if not k.startswith("input_proj.")})}


@pytest.mark.parametrize("case", sorted(PRIOR_BAD))
def test_malformed_official_prior_fields(tmp_path, case):
    _refused(load_prior, _official_prior(tmp_path, **PRIOR_BAD[case]))
