"""Exploding inverses are detected per image before clamping, reported, never written."""
import numpy as np
import pytest
import torch
from PIL import Image

from flowsr_lp import SuperResolver, save_flow
from flowsr_lp.cli import main
from flowsr_lp.flows.srflow import SRFlow, SRFlowConfig
from flowsr_lp.pipeline import finite_mask

from helpers import explode_at_tau, tiny_srflow


def _img(path, h=6, w=8):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_finite_mask_is_per_item_and_sees_what_clamping_hides():
    sr = torch.rand(3, 3, 4, 4)
    sr[1, 0, 2, 2] = float("inf")
    sr[2, 1, 0, 0] = float("nan")
    assert finite_mask(sr).tolist() == [True, False, False]
    assert finite_mask(sr.clamp(0, 1)).tolist() == [True, True, False]  # clamping hides inf


def test_huge_latent_explodes_and_is_detected(monkeypatch):
    explode_at_tau(monkeypatch, SRFlow)
    flow = tiny_srflow(4)
    res = SuperResolver(flow)
    lr = torch.rand(2, 3, 6, 6)
    ok = res.upscale(lr, scale=4, tau=0.5, generator=torch.Generator().manual_seed(0))
    bad = res.upscale(lr, scale=4, tau=10, generator=torch.Generator().manual_seed(0))
    assert finite_mask(ok).all()
    assert not finite_mask(bad).any()


@pytest.fixture
def srflow_file(tmp_path):
    return str(save_flow(tiny_srflow(4), tmp_path / "srflow.safetensors"))


def test_cli_reports_and_writes_nothing(tmp_path, capsys, srflow_file, monkeypatch):
    explode_at_tau(monkeypatch, SRFlow)
    src = _img(tmp_path / "a.png")
    code = main(["upscale", "--quiet", str(src), "--flow", srflow_file, "--tau", "10", "--retries", "2",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "a.png: exploding inverse: the flow's output went inf/NaN (3 draws); nothing written" in err
    assert err.count("retrying with seed") == 2
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_cli_retry_draws_a_new_sample(tmp_path, capsys, srflow_file, monkeypatch):
    src = _img(tmp_path / "a.png")
    real_decode, calls = SRFlow.decode, []

    def first_call_explodes(self, latent, ctx):
        calls.append(latent[-1].sum().item())
        out = real_decode(self, latent, ctx)
        return out * float("nan") if len(calls) == 1 else out

    monkeypatch.setattr(SRFlow, "decode", first_call_explodes)
    code = main(["upscale", "--quiet", str(src), "--flow", srflow_file, "--retries", "1", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "exploding inverse (inf/NaN) with seed 0; retrying with seed 1" in err
    assert len(calls) == 2 and calls[0] != calls[1]  # a different draw, not the same latent again
    assert Image.open(tmp_path / "out" / "a.png").size == (32, 24)


def test_cli_fixed_scale_rules(tmp_path, capsys, srflow_file):
    src = _img(tmp_path / "a.png")
    assert main(["upscale", "--quiet", str(src), "--flow", srflow_file, "--scale", "3", "-o", str(tmp_path / "o")]) == 2
    assert "fixed-scale x4" in capsys.readouterr().err
    assert main(["upscale", "--quiet", str(src), "--flow", srflow_file, "--scale", "4", "-o", str(tmp_path / "o")]) == 0


@pytest.mark.slow
def test_cli_with_released_4x_layout(tmp_path, capsys):
    """`flowsr-lp upscale --flow SRFlow_DF2K_4X.pth --tau 0.9` on a full-size (random) model,
    stored the way the release is: a raw state dict."""
    torch.manual_seed(0)
    torch.save(SRFlow(SRFlowConfig()).state_dict(), tmp_path / "SRFlow_DF2K_4X.pth")
    src = _img(tmp_path / "a.png", 7, 9)  # odd size: reflect-padded, then cropped back
    code = main(["upscale", "--quiet", str(src), "--flow", str(tmp_path / "SRFlow_DF2K_4X.pth"), "--tau", "0.9",
                 "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "out" / "a.png").size == (36, 28)
