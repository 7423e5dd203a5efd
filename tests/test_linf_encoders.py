"""LINF's RDN and SwinIR encoders: what the official checkpoints need beyond the reference
vectors (test_linf_reference.py): padding, the stored attention masks, sizes read off the
weights and checked against what a checkpoint declares."""
import pytest
import torch
import torch.nn.functional as F

from flowsr_lp import load_flow
from flowsr_lp.errors import CheckpointError, ImageError
from flowsr_lp.nets.swin import shifted_window_mask
from flowsr_lp.nets.swinir import SwinIR

from conftest import REFERENCE, need

pytestmark = pytest.mark.usefixtures("no_grad")


def tiny_swinir(seed=0):
    torch.manual_seed(seed)
    enc = SwinIR(embed_dim=8, depths=[2], num_heads=[2], window_size=4, mlp_ratio=2.0, img_size=12)
    for p in enc.parameters():  # far from the initialisation, so masks and biases matter
        p.add_(0.3 * torch.randn_like(p))
    return enc.eval()


def official(name: str) -> dict:
    return torch.load(need(REFERENCE / f"{name}.pth"), weights_only=True)


def test_swinir_reflect_pads_to_window_multiple_and_never_crops():
    enc = tiny_swinir()
    x = torch.rand(1, 3, 10, 13)
    feat = enc(x)
    assert feat.shape == (1, 64, 12, 16)
    padded = F.pad(x, (0, 3, 0, 2), mode="reflect")
    torch.testing.assert_close(feat, enc(padded), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(feat, enc(F.pad(x, (0, 3, 0, 2), mode="replicate")), atol=1e-3)


def test_swinir_uses_stored_mask_only_at_img_size():
    enc = tiny_swinir()
    block = enc.layers[0].residual_group.blocks[1]
    torch.testing.assert_close(block.attn_mask, shifted_window_mask(12, 12, 4, 2))
    assert not hasattr(enc.layers[0].residual_group.blocks[0], "attn_mask")  # unshifted: no mask
    at_size, other = torch.rand(1, 3, 10, 11), torch.rand(1, 3, 16, 16)  # padded: 12 x 12, 16 x 16
    before = enc(at_size), enc(other)
    block.attn_mask.zero_()  # a mask that masks nothing
    assert not torch.allclose(enc(at_size), before[0], atol=1e-3)
    torch.testing.assert_close(enc(other), before[1], atol=0, rtol=0)


def test_swinir_refuses_input_too_small_to_reflect():
    with pytest.raises(ImageError, match="too small"):
        tiny_swinir()(torch.rand(1, 3, 2, 8))


def test_swinir_local_part_runs_on_padded_feature_grid():
    flow = load_flow(need(REFERENCE / "linf-swinir-small.pth"))
    lr = torch.rand(1, 3, 20, 26)
    ctx = flow.condition(lr, (70, 91))
    assert ctx.lr_maps.shape[1:3] == (24, 32)  # features of the padded 24 x 32 input
    assert ctx.grid_size == (70, 91) and ctx.inp.shape[-2:] == (20, 26)
    assert flow._bilinear_base(ctx).shape[-2:] == (70, 91)


@pytest.mark.parametrize("name", ["linf-rdn-small", "linf-swinir-small"])
def test_released_layout_without_declared_sizes_loads(name, tmp_path):
    """Released checkpoints carry only `no_upsampling`: the sizes come from the weights."""
    ck = official(name)
    declared = ck["model"]["args"]["encoder_spec"]["args"]
    ck["model"]["args"]["encoder_spec"]["args"] = {"no_upsampling": True}
    torch.save(ck, tmp_path / "released.pth")
    flow = load_flow(tmp_path / "released.pth")
    expected = {k: v for k, v in declared.items() if k in flow.config.encoder_args}
    assert expected and {k: flow.config.encoder_args[k] for k in expected} == expected


@pytest.mark.parametrize("name, key, value, message", [
    ("linf-rdn-small", "D", 16, "say rdn D=16 but the weights have 3"),
    ("linf-rdn-small", "RDNconfig", "B", "say rdn D=16 but the weights have 3"),
    ("linf-rdn-small", "RDNconfig", "Z", "unknown RDNconfig 'Z'"),
    ("linf-rdn-small", "no_upsampling", False, "not a LINF encoder"),
    ("linf-swinir-small", "embed_dim", 180, "say swinir embed_dim=180 but the weights have 24"),
    ("linf-swinir-small", "depths", [6, 6], r"depths=\[6, 6\] but the weights have \[2, 2\]"),
    ("linf-swinir-small", "upsampler", "pixelshuffle", "upsampler='pixelshuffle' is not supported"),
    ("linf-swinir-small", "ape", True, "ape=True is not supported"),
])
def test_declared_sizes_are_checked_against_weights(name, key, value, message, tmp_path):
    ck = official(name)
    ck["model"]["args"]["encoder_spec"]["args"][key] = value
    if name == "linf-rdn-small" and key == "RDNconfig":
        for k in ("D", "C", "G"):
            del ck["model"]["args"]["encoder_spec"]["args"][k]
    torch.save(ck, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=message):
        load_flow(tmp_path / "bad.pth")


def test_unknown_encoder_names_the_supported_ones(tmp_path):
    ck = official("linf-rdn-small")
    ck["model"]["args"]["encoder_spec"]["name"] = "hat"
    torch.save(ck, tmp_path / "hat.pth")
    with pytest.raises(CheckpointError, match=r"'hat' is not supported.*'rdn', 'rrdb', 'swinir'"):
        load_flow(tmp_path / "hat.pth")
