"""The generative side in the tools: evaluate --bpd / --variation / --sr-space rows, upscale
--variation / --draws, temperature-map --prior, and training a scale head alone."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from flowsr_lp import load_prior, save_flow, save_prior
from flowsr_lp.cli import main
from flowsr_lp.pipeline import LearnedPrior, SuperResolver
from flowsr_lp.priors import LINFLatentModule, LINFPriorConfig
from flowsr_lp.train.validate import Validator

from helpers import natural_images, read_csv, tiny_linf, training_fixtures, write_recipe

images, flow_file = training_fixtures(n=8, size=96)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    torch.manual_seed(0)
    prior = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, scale_head=True)).eval()
    torch.nn.init.normal_(prior.scale_head.body[-1].weight, std=0.3)
    return str(save_flow(tiny_linf(3), d / "flow.safetensors")), str(save_prior(prior, d / "prior.safetensors"))


@pytest.fixture(scope="module")
def hr_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("sets") / "Mini" / "HR"
    d.mkdir(parents=True)
    natural_images(d, n=2, size=48)
    return d.parent


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_bpd_and_variation_rows(tmp_path, models, hr_set, capsys):
    flow, prior = models
    out = tmp_path / "ev"
    assert main(["evaluate", "--flow", flow, "--prior", prior, "--data", str(hr_set), "--scale", "2",
                 "--tau", "0", "0.5", "--variation", "0.5", "--runs", "3", "--bpd", "--no-lpips",
                 "-o", str(out), "--device", "cpu", "--threads", "1"]) == 0, capsys.readouterr().err
    rows = _rows(out / "results.csv")
    methods = {r["method"] for r in rows}
    assert methods == {"tau=0", "tau=0.5", "LP", "LP variation=0.5"}
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    assert len(by["LP variation=0.5"]) == 2 * 3 and {r["seed"] for r in by["LP variation=0.5"]} == {""}
    assert all(r["bpd"] == "" for r in by["tau=0"])  # a point mass has no density
    for m in ("tau=0.5", "LP", "LP variation=0.5"):
        assert all(math.isfinite(float(r["bpd"])) for r in by[m])
    # the same image's bpd differs between N(mu, sigma^2) and N(mu, (0.5 sigma)^2)
    assert by["LP"][0]["bpd"] != by["LP variation=0.5"][0]["bpd"]
    assert float(by["LP variation=0.5"][0]["diversity"]) > 0 and by["LP"][0].get("diversity", "") == ""
    md = (out / "table.md").read_text()
    assert "bits/dim (↓)" in md and "LP variation=0.5" in md
    # the column agrees with the API
    import flowsr_lp
    from flowsr_lp.evaluate import Dataset, make_pair
    f = sorted((hr_set / "HR").iterdir())[0]
    hr, lr, _ = make_pair(f, Dataset("Mini", hr_set / "HR", None), 2.0, "make")
    r = SuperResolver(flowsr_lp.load_flow(flow), load_prior(prior))
    want = r.bits_per_dim(hr[None], lr[None], LearnedPrior(load_prior(prior))).item()
    got = [float(x["bpd"]) for x in by["LP"] if x["image"] == f.stem][0]
    assert got == pytest.approx(want, rel=1e-9)


def test_sr_space_needs_the_alexnet_weights(tmp_path, models, hr_set, capsys, monkeypatch):
    monkeypatch.setenv("FLOWSR_LP_ALEXNET", str(tmp_path / "missing.pth"))
    flow, _ = models
    code = main(["evaluate", "--flow", flow, "--data", str(hr_set), "--scale", "2", "--tau", "0.5", "--runs", "2",
                 "--sr-space", "--no-lpips", "-o", str(tmp_path / "ev"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "alexnet" in err.lower() and "Traceback" not in err


def test_variation_without_prior_is_refused(tmp_path, models, hr_set, capsys):
    flow, _ = models
    assert main(["evaluate", "--flow", flow, "--data", str(hr_set), "--variation", "0.5", "--no-lpips",
                 "-o", str(tmp_path / "e")]) == 2
    assert "--prior" in capsys.readouterr().err


def test_upscale_draws_around_the_prior(tmp_path, models):
    flow, prior = models
    src = natural_images(tmp_path / "in", n=1, size=24) / "img0.png"
    out = tmp_path / "out"
    assert main(["upscale", str(src), "--flow", flow, "--prior", prior, "--scale", "2", "--variation", "0.6",
                 "--draws", "3", "--seed", "7", "-o", str(out), "--threads", "1"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["img0_0.png", "img0_1.png", "img0_2.png"]
    imgs = [torch.frombuffer(bytearray(Image.open(out / f).tobytes()), dtype=torch.uint8).float() for f in files]
    assert (imgs[0] - imgs[1]).abs().mean() > 0.5  # different draws
    # draw d is seed + d: the second draw equals a single run with seed 8
    one = tmp_path / "one.png"
    assert main(["upscale", str(src), "--flow", flow, "--prior", prior, "--scale", "2", "--variation", "0.6",
                 "--seed", "8", "-o", str(one), "--threads", "1"]) == 0
    assert torch.equal(torch.frombuffer(bytearray(Image.open(one).tobytes()), dtype=torch.uint8).float(), imgs[1])
    # variation 0 is the prior's prediction
    zero, plain = tmp_path / "zero.png", tmp_path / "plain.png"
    assert main(["upscale", str(src), "--flow", flow, "--prior", prior, "--scale", "2", "--variation", "0",
                 "-o", str(zero)]) == 0
    assert main(["upscale", str(src), "--flow", flow, "--prior", prior, "--scale", "2", "-o", str(plain)]) == 0
    assert zero.read_bytes() == plain.read_bytes()


@pytest.mark.parametrize("batch", [1, 2])
def test_upscale_draws_condition_each_input_once(tmp_path, models, monkeypatch, batch):
    """--draws N reads and conditions each batch once (its N draws follow each other), and
    every draw is still the image a single run with its seed gives."""
    from flowsr_lp.flows.linf import LINF

    flow, prior = models
    src = natural_images(tmp_path / "in", n=2, size=20)
    calls = []
    condition = LINF.condition
    monkeypatch.setattr(LINF, "condition", lambda self, lr, *a, **k: calls.append(lr.shape[0]) or condition(self, lr, *a, **k))
    args = ["upscale", str(src), "--flow", flow, "--prior", prior, "--scale", "2", "--variation", "0.6", "--seed", "3",
            "--threads", "1", "--batch-size", str(batch)]
    assert main(args + ["--draws", "3", "-o", str(tmp_path / "out")]) == 0
    assert calls == ([1, 1] if batch == 1 else [2])  # once per batch, not once per draw
    assert len(list((tmp_path / "out").iterdir())) == 6
    assert main(args[:-2] + ["--batch-size", "1", "--seed", "5", "-o", str(tmp_path / "one")]) == 0
    for name in ("img0", "img1"):  # draw 2 = seed 3 + 2, up to the rounding of a batch of 2 against 1
        a, b = (np.asarray(Image.open(tmp_path / d / f).convert("RGB"), dtype=np.int16)  # (AMD EPYC's kernels
                for d, f in (("out", f"{name}_2.png"), ("one", f"{name}.png")))  # differ by batch size)
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01


def test_temperature_map_draws_the_learned_scale(tmp_path, models):
    flow, prior = models
    img = natural_images(tmp_path / "img", n=1, size=72) / "img0.png"
    out = tmp_path / "tm"
    assert main(["temperature-map", str(img), "--flow", flow, "--prior", prior, "--scale", "2", "--metric", "psnr",
                 "--taus", "0", "0.3", "0.6", "0.9", "--region", "12", "-o", str(out)]) == 0
    s = json.loads((out / "temperature_map.json").read_text())
    assert len(s["sigma_map"]) == len(s["map"]) == 6 and len(s["sigma_map"][0]) == 6
    assert min(min(r) for r in s["sigma_map"]) > 0 and (out / "temperature_map.png").stat().st_size > 1000
    sig = torch.tensor(s["sigma_map"])
    assert sig.std() > 0  # the random head's scale varies over the image
    # a map whose best tau is the same everywhere has no ranking: None, not NaN
    assert s["rank_correlation"] is None or -1 <= s["rank_correlation"] <= 1


def test_rank_correlation():
    from flowsr_lp.temperature import rank_correlation
    a = torch.tensor([[0.1, 0.5], [0.3, 0.9]])
    assert rank_correlation(a, a ** 2) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, torch.tensor([[1.0, 3.0], [2.0, 2.0]])) == pytest.approx(3 / 22.5 ** 0.5, rel=1e-9)  # ranks [1,3,2,4] vs [1,4,2.5,2.5]
    assert rank_correlation(a, torch.zeros(2, 2)) is None


def test_scale_only_training_keeps_mu_and_lowers_the_nll(tmp_path, images, flow_file):
    torch.manual_seed(0)
    start = LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2))
    start.train()
    with torch.no_grad():  # BatchNorm statistics that a training-mode pass would move
        start(tuple([torch.randn(2, 27, 8, 8)]), torch.rand(2, 3, 8, 8))
    path = save_prior(start.eval(), tmp_path / "start.safetensors")
    cfg = write_recipe(tmp_path / "r.yaml", task="prior", flow={"checkpoint": flow_file},
                       prior={"checkpoint": str(path), "scale_head": True},
                       data={"train": {"folders": [images], "repeat": 4},
                             "crop": {"kind": "linf-lp", "lr_size": 24, "window": None, "scale_min": 1, "scale_max": 3},
                             "val": {"folders": [images], "scale": 2.5, "max_images": 2}},
                       optim={"batch_size": 4, "iterations": 30, "lr": 5e-3},
                       loss={"perceptual": "none", "scale_only": True},
                       run={"out": str(tmp_path / "run"), "log_every": 3, "ckpt_every": 10, "val_every": 30, "seed": 1})
    assert main(["train-prior", cfg]) == 0
    rows = read_csv(tmp_path / "run" / "log.csv")
    assert "scale_nll" in rows[0] and "l1" not in rows[0]
    vals = [float(r["scale_nll"]) for r in rows]
    assert sum(vals[-3:]) / 3 < sum(vals[:3]) / 3
    trained = load_prior(tmp_path / "run" / "model.safetensors")
    assert trained.config.scale_head
    before, after = load_file(path), load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # every mu weight and BN statistic
    assert any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in after if k.startswith("scale_head.body.2"))
    val = read_csv(tmp_path / "run" / "val.csv")
    assert math.isfinite(float(val[-1]["val_bpd"])) and math.isfinite(float(val[-1]["val_psnr"]))


def test_a_recipe_changes_a_started_modules_config_or_stops_clearly(tmp_path, images, flow_file, capsys):
    torch.manual_seed(0)
    path = save_prior(LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2)).eval(),
                      tmp_path / "start.safetensors")

    def recipe(name, config):
        return write_recipe(tmp_path / f"{name}.yaml", task="prior", flow={"checkpoint": flow_file},
                            prior={"checkpoint": str(path), "config": config},
                            data={"train": {"folders": [images], "repeat": 2},
                                  "crop": {"kind": "linf-lp", "lr_size": 24, "window": None, "scale_min": 1,
                                           "scale_max": 3}},
                            optim={"batch_size": 4, "iterations": 4, "lr": 1e-3}, loss={"perceptual": "none"},
                            run={"out": str(tmp_path / name), "log_every": 2, "ckpt_every": 4, "seed": 1})

    assert main(["train-prior", recipe("up", {"lr_input": "upsampled", "scale_head": True})]) == 0
    trained = load_prior(tmp_path / "up" / "model.safetensors")
    assert trained.config.lr_input == "upsampled" and trained.config.scale_head and trained.config.dim == 8
    assert main(["train-prior", recipe("wider", {"dim": 16})]) != 0
    err = capsys.readouterr().err
    assert "prior: cannot change ['dim']" in err and not (tmp_path / "wider" / "model.safetensors").exists()


def test_validation_follows_the_evaluate_protocol_at_x2_5(images):
    v = Validator({"data": {"val": {"folders": [images], "scale": 2.5, "max_images": 2}}}, torch.device("cpu"))
    lr, hr, _ = v.pairs[0]
    assert (lr * 255 - (lr * 255).round()).abs().max() < 1e-4  # an 8-bit LR, as evaluate makes it
    assert tuple(lr.shape[-2:]) == (round(hr.shape[-2] / 2.5), round(hr.shape[-1] / 2.5))
    out = v(SuperResolver(tiny_linf(3)))
    assert set(out) == {"val_psnr", "val_lr_psnr", "val_bpd"} and all(math.isfinite(x) for x in out.values())
