"""Model names on the command line: `flowsr-lp models`, and names / URLs in every command that
takes a checkpoint (upscale, evaluate, temperature-map, training's frozen flow). The models are
the shared reference checkpoints, served from 127.0.0.1 through $FLOWSR_LP_MIRROR."""
from __future__ import annotations

import pytest
import torch

import flowsr_lp
from flowsr_lp.cli import main

from helpers import natural_images, read_csv, write_recipe
from hub_server import FLOW, PRIOR, cached_files, entry, git_blob_id, home, ref_bytes, server, use_table  # noqa: F401


@pytest.fixture
def named(home, server, use_table, ref_bytes, monkeypatch):
    """Registry names ref-linf (pinned) and ref-linf-lp (names its flow), served by the mirror."""
    use_table(entry("ref-linf", FLOW, patch_size=3, urls=["https://example.invalid/ref-linf.pth"],
                    checksum=f"git-sha1:{git_blob_id(ref_bytes[FLOW])}"),
              entry("ref-linf-lp", PRIOR, family="linf-lp", flow="ref-linf", gdrive="unused-drive-id"))
    monkeypatch.setenv("FLOWSR_LP_MIRROR", f"{server.url}/m")
    return server


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_models_lists_downloads_and_converts(named, home, tmp_path, capsys, ref_bytes):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()[:3]
    assert header.split() == ["NAME", "FAMILY", "SCALE", "SIZE", "CACHED", "VERIFIED", "SOURCE"]
    assert rows[0].split()[:2] == ["ref-linf", "linf"] and " no " in rows[0] and "yes (git-sha1)" in rows[0]
    assert "unverified" in rows[1] and "drive.google.com/file/d/unused-drive-id" in rows[1]
    assert main(["-q", "models", "download", "ref-linf", "ref-linf-lp"]) == 0
    assert sorted(cached_files(home)) == sorted([f"models/{FLOW}", f"models/{PRIOR}"])
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:3]
    assert all(" yes " in r for r in rows) and f"{len(ref_bytes[FLOW]) / 1e6:.1f} MB" in rows[0] and "(sha256 recorded)" in rows[1]
    assert main(["models", "convert", "ref-linf", "-o", str(tmp_path / "flow.safetensors")]) == 0
    assert main(["models", "convert", "ref-linf-lp", "-o", str(tmp_path / "prior.safetensors")]) == 0
    assert "flow written to" in capsys.readouterr().out
    a, b = flowsr_lp.load_flow("ref-linf"), flowsr_lp.load_flow(tmp_path / "flow.safetensors")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert flowsr_lp.load_prior(tmp_path / "prior.safetensors").kind == "linf-lp"
    assert len(named.gets(f"/m/{FLOW}")) == 1


def test_models_bad_input_is_one_error_line(named, home, use_table, capsys):
    assert main(["models", "download", "ref-linf", "ref-lnif-lp"]) == 2
    assert "did you mean ref-linf-lp" in one_error_line(capsys.readouterr().err)
    assert not home.exists() or cached_files(home) == []  # every name is checked before any download
    use_table(entry("bad", FLOW, urls=["https://example.invalid/x.pth"], checksum="sha256:" + "ab" * 32))
    assert main(["-q", "models", "download", "bad"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("flowsr-lp: error: ") and f"expected {'ab' * 32}, got " in line
    assert cached_files(home) == []


def test_upscale_takes_a_prior_name_alone(named, tmp_path, capsys):
    img = natural_images(tmp_path / "in", n=1, size=30) / "img0.png"
    assert main(["-q", "upscale", str(img), "--prior", "ref-linf-lp", "--scale", "2", "-o", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").is_file()
    assert len(named.gets(f"/m/{FLOW}")) == 1 and len(named.gets(f"/m/{PRIOR}")) == 1
    url = f"{named.url}/m/{FLOW}"
    assert main(["-q", "upscale", str(img), "--flow", url, "--scale", "2", "-o", str(tmp_path / "b.png")]) == 0
    assert main(["upscale", str(img), "--flow", "ref-linf-lp", "--scale", "2", "-o", str(tmp_path / "c.png")]) == 2
    assert "ref-linf-lp is a latent module for ref-linf" in one_error_line(capsys.readouterr().err)


def test_evaluate_and_temperature_map_take_names(named, tmp_path):
    natural_images(tmp_path / "set" / "HR", n=1, size=36)
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", "--prior", "ref-linf-lp", "--data", str(tmp_path / "set"), "--scales", "2",
                 "--tau", "0.5", "--no-lpips", "-o", str(out)]) == 0
    assert "flow ref-linf with learned prior ref-linf-lp" in (out / "table.md").read_text()
    assert {r["method"] for r in read_csv(out / "results.csv")} == {"tau=0.5", "LP"}
    img = natural_images(tmp_path / "tm", n=1, size=48) / "img0.png"
    assert main(["-q", "temperature-map", str(img), "--flow", "ref-linf", "--scale", "2", "--metric", "psnr",
                 "--taus", "0", "0.5", "--region", "24", "-o", str(tmp_path / "tmap")]) == 0
    assert (tmp_path / "tmap" / "temperature_map.json").is_file()
    assert len(named.gets(f"/m/{FLOW}")) == 1  # downloaded once, then from the cache


def test_training_freezes_a_flow_given_by_name(named, tmp_path):
    images = natural_images(tmp_path / "imgs", n=4, size=72)
    recipe = write_recipe(tmp_path / "r.yaml", task="prior", flow={"checkpoint": "ref-linf"},
                          prior={"family": "linf-lp", "config": {"generator": "unet", "dim": 8, "depth": 2}},
                          data={"train": {"folders": [str(images)], "repeat": 2},
                                "crop": {"kind": "linf-lp", "lr_size": 24, "window": 24, "scale_min": 1, "scale_max": 2}},
                          optim={"batch_size": 2, "iterations": 2, "lr": 1e-3}, loss={"perceptual": "none"},
                          run={"out": str(tmp_path / "run"), "log_every": 1, "ckpt_every": 2, "seed": 0})
    assert main(["-q", "train-prior", recipe]) == 0
    prior = flowsr_lp.load_prior(tmp_path / "run" / "model.safetensors")
    flowsr_lp.SuperResolver(flowsr_lp.load_flow("ref-linf"), prior)
    assert len(named.gets(f"/m/{FLOW}")) == 1
