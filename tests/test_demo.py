"""The main job: bundled models and `flowsr-lp demo`."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowsr_lp import load_flow, load_prior
from flowsr_lp.checkpoints import read_checkpoint
from flowsr_lp.cli import main
from flowsr_lp.hub.registry import BUNDLED
from flowsr_lp.hub.resolve import bundled_path


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_models_load_and_say_how_they_were_trained(name):
    path = bundled_path(name)
    model = (load_prior if name.endswith("-lp") else load_flow)(path)
    copies = 1 + len(getattr(model.config, "specialists", ()))  # a scale specialist is a copy of its module
    assert sum(p.numel() for p in model.parameters()) < 1.5e6 * copies
    assert path.stat().st_size < 8e6  # specialists ship in float16
    training = read_checkpoint(path)[1]["training"]
    # the recipe of its first stage, shipped beside the others
    recipe = training["recipe"]
    assert training["steps"] > 0 and recipe.startswith(f"configs/cpu/{name}") and recipe.endswith(".yaml")
    assert (Path(__file__).parents[1] / recipe).is_file()
    if name.endswith("-lp"):
        assert training["perceptual"].startswith(("none (pixel L1", "none (pixel L2"))  # no VGG weights here


def test_the_bundled_files_stay_under_40_mb_in_all():
    assert sum(bundled_path(name).stat().st_size for name in BUNDLED) < 40e6


def test_demo_on_one_small_image(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--images", "1", "--size", "48", "--runs", "2", "-o", str(out), "--quiet"]) == 0
    for name in ("report.html", "results.csv", "summary.json", "table.md", "demo.json", "perception_distortion.png",
                 "temperature/temperature_map.png", "temperature/composite.png"):
        assert (out / name).is_file(), name
    res = json.loads((out / "demo.json").read_text())
    methods = {e["method"] for e in res["summary"]}
    assert {"LINF LP", "SRFlow LP", "HCFlow LP", "LINF tau=0.8", "SRFlow tau=0.9", "HCFlow tau=0.9"} <= methods
    for e in res["summary"]:
        assert e["inf_rate"] is not None and 0 <= e["inf_rate"] <= 100
        for k in ("psnr", "ssim", "lr_psnr", "grid"):
            assert e[k] is not None and math.isfinite(e[k]), (e["method"], k)
    assert math.isfinite(res["temperature_map"]["per_region_score"])
    html = (out / "report.html").read_text()
    assert "Temperature map" in html and "--perceptual vgg" in html
    assert "LINF LP" in capsys.readouterr().out


def test_upscale_without_flow_uses_the_bundled_model(tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(src)
    assert main(["upscale", "--quiet", str(src), "--scale", "3", "-o", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "a.png").size == (72, 60)
