"""Checkpoint loading: official and project formats, strictness, clear one-line errors."""
import pickle

import pytest
import torch
from safetensors.torch import save_file

from flowsr_lp import CheckpointError, load_flow, save_flow
from flowsr_lp.flows.linf import LINF

from conftest import REFERENCE, need
from helpers import tiny_linf


def _outputs(flow, seed=0):
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(1, 3, 7, 8, generator=g)
    with torch.no_grad():
        ctx = flow.condition(lr, (19, 23))
        z = flow.sample_latent(ctx, 0.7, g)
        return flow.decode(z, ctx), flow.encode(torch.rand(1, 3, 19, 23, generator=g), ctx)[1]


@pytest.mark.parametrize("patch_size", [1, 3])
def test_project_format_round_trip_is_bit_exact(tmp_path, patch_size):
    flow = tiny_linf(patch_size, encoder="rrdb")
    path = save_flow(flow, tmp_path / "m.safetensors")
    again = load_flow(path)
    assert isinstance(again, LINF) and again.config == flow.config
    for a, b in zip(_outputs(flow), _outputs(again)):
        assert torch.equal(a, b)


def test_official_checkpoint_round_trips_through_project_format(tmp_path):
    flow = load_flow(need(REFERENCE / "linf-patch-rrdb-nb2.pth"))
    again = load_flow(save_flow(flow, tmp_path / "rrdb.safetensors"))
    assert again.config.encoder_args == {"nb": 2}
    for a, b in zip(_outputs(flow), _outputs(again)):
        assert torch.equal(a, b)


def _one_line_error(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_flow(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    _one_line_error(tmp_path / "nope.pth", "no such checkpoint")


def test_garbage_file(tmp_path):
    p = tmp_path / "garbage.pth"
    p.write_bytes(b"this is not a checkpoint at all" * 10)
    _one_line_error(p, "unreadable checkpoint")


def test_truncated_official_file(tmp_path):
    src = need(REFERENCE / "linf-patch-edsr-baseline.pth").read_bytes()
    p = tmp_path / "cut.pth"
    p.write_bytes(src[: len(src) // 2])
    _one_line_error(p, "unreadable checkpoint")


def test_truncated_project_file(tmp_path):
    good = save_flow(tiny_linf(3), tmp_path / "m.safetensors").read_bytes()
    p = tmp_path / "cut.safetensors"
    p.write_bytes(good[: len(good) - 100])
    _one_line_error(p, "unreadable checkpoint")


def test_pickled_code_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"model": Exception("arbitrary object")}, f)
    _one_line_error(p, "unreadable checkpoint")


def _official(flow, name="linf-patch"):
    return {"model": {"name": name, "args": {"encoder_spec": {"name": "edsr-baseline",
            "args": {"no_upsampling": True, "n_resblocks": 1, "n_feats": 8}}, "hidden_dim": 16,
            "flow_layers": 3, "num_layer": 3, "patch_size": 3}, "sd": flow.state_dict()}}


def test_official_layout_of_a_custom_size_loads(tmp_path):
    flow = tiny_linf(3)
    torch.save(_official(flow), tmp_path / "ok.pth")
    for a, b in zip(_outputs(flow), _outputs(load_flow(tmp_path / "ok.pth"))):
        assert torch.equal(a, b)


def test_mismatched_weights_are_named(tmp_path):
    ck = _official(tiny_linf(3))
    sd = ck["model"]["sd"]
    sd["layers.6.weight"] = sd["layers.6.weight"][:10]
    del sd["coef.bias"]
    sd["extra.thing"] = torch.zeros(1)
    torch.save(ck, tmp_path / "bad.pth")
    msg = _one_line_error(tmp_path / "bad.pth", "does not match")
    assert "coef.bias" in msg and "extra.thing" in msg and "layers.6.weight" in msg


def test_unsupported_model_name(tmp_path):
    torch.save(_official(tiny_linf(3), name="liif"), tmp_path / "liif.pth")
    _one_line_error(tmp_path / "liif.pth", "'liif' is not supported")


def test_prior_checkpoint_is_not_a_flow(tmp_path):
    torch.save({"prior_model": {"name": "unet", "args": {}, "sd": {}}}, tmp_path / "lp.pth")
    _one_line_error(tmp_path / "lp.pth", "latent-module")


def test_unknown_layout(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "x.pth")
    _one_line_error(tmp_path / "x.pth", "unrecognised checkpoint layout")


def test_safetensors_without_our_metadata(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    _one_line_error(tmp_path / "plain.safetensors", "without flowsr-lp metadata")
