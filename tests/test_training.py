"""Training: losses fall, the flow stays frozen, resumption is exact, DDP matches one process."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowsr_lp import load_flow, load_prior
from flowsr_lp.cli import main
from flowsr_lp.data.batches import EpochBatches
from flowsr_lp.data.crops import LINFCrops, LINFLPCrops, SRFlowCrops
from flowsr_lp.data.folders import ImageFolder
from flowsr_lp.train.config import ConfigError, load_config

from helpers import read_csv, training_fixtures, write_recipe


images, flow_file = training_fixtures(n=8, size=96)


def prior_recipe(tmp_path, images, flow_file, out="run", iterations=24, generator="unet", **extra):
    gen_cfg = {"unet": {"generator": "unet", "dim": 8, "depth": 2},
               "edsr": {"generator": "edsr-baseline-latent", "dim": 8, "n_resblocks": 2}}[generator]
    cfg = dict(task="prior", flow={"checkpoint": flow_file}, prior={"family": "linf-lp", "config": gen_cfg},
               data={"train": {"folders": [images], "repeat": 4}, "crop": {"kind": "linf-lp", "lr_size": 24,
                     "window": 24, "scale_min": 1, "scale_max": 3}},
               optim={"batch_size": 4, "iterations": iterations, "lr": 2e-3},
               loss={"perceptual": "none"},
               run={"out": str(tmp_path / out), "log_every": 2, "ckpt_every": 4, "seed": 3})
    for k, v in extra.items():
        cfg[k].update(v)
    return write_recipe(tmp_path / f"{out}.yaml", **cfg)


def _falls(rows, key):
    vals = [float(r[key]) for r in rows]
    k = max(2, len(vals) // 4)
    return sum(vals[-k:]) / k < sum(vals[:k]) / k


def test_prior_training_loss_falls_and_flow_is_untouched(tmp_path, images, flow_file):
    before = load_file(flow_file)
    assert main(["train-prior", prior_recipe(tmp_path, images, flow_file, iterations=40)]) == 0
    rows = read_csv(tmp_path / "run" / "log.csv")
    assert len(rows) == 20 and _falls(rows, "loss")
    after = load_file(flow_file)
    assert all(torch.equal(before[k], after[k]) for k in before)
    prior = load_prior(tmp_path / "run" / "model.safetensors")
    assert prior.config.dim == 8
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 40 and ck["perceptual"].startswith("none (pixel L1")
    assert "perceptual_used: none (pixel L1" in (tmp_path / "run" / "config.yaml").read_text()


def test_joint_fine_tune_trains_the_flow_on_alternate_steps_and_saves_both(tmp_path, images, flow_file):
    before = load_file(flow_file)
    recipe = prior_recipe(tmp_path, images, flow_file, iterations=8, flow={"train": True},
                          run={"log_every": 1, "val_every": 8},
                          data={"val": {"folders": [images], "scale": 2, "max_images": 1}})
    assert main(["train-prior", recipe, "--set", "run.threads=1"]) == 0
    assert all(torch.equal(before[k], v) for k, v in load_file(flow_file).items())  # the start file untouched
    out = tmp_path / "run"
    trained = load_file(out / "flow.safetensors")
    assert trained.keys() == before.keys() and any(not torch.equal(before[k], trained[k]) for k in before)
    rows = read_csv(out / "log.csv")  # even steps: the flow's NLL alone; odd steps: the module's losses
    assert [bool(r["nll"]) for r in rows] == [True] * 8  # each row: the latest value of each
    assert [bool(r["l1"]) for r in rows] == [s >= 2 for s in range(1, 9)]
    assert [r["nll"] == rows[i - 1]["nll"] for i, r in enumerate(rows) if i] == [i % 2 == 1 for i in range(1, 8)]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert "flow trained too, NLL x0.0005" in ck["perceptual"]
    assert any(k.startswith("flow.") for k in ck["model"]) and any(k.startswith("prior.") for k in ck["model"])
    from flowsr_lp.pipeline import SuperResolver
    r = SuperResolver(load_flow(out / "flow.safetensors"), load_prior(out / "model.safetensors"))
    assert torch.isfinite(r(torch.rand(1, 3, 10, 12), scale=2).images).all()
    # the validation ran on the pair being trained, and the recipe check names the option
    assert (out / "val.csv").exists()
    bad = prior_recipe(tmp_path, images, flow_file, out="bad", flow={"train": True}, loss={"scale_only": True})
    with pytest.raises(ConfigError, match="flow.train"):
        load_config(bad)


def test_interpolation_stage_moves_every_weight_part_of_the_way(tmp_path, images, flow_file):
    from helpers import tiny_linf
    from flowsr_lp.checkpoints import save_flow
    other = str(save_flow(tiny_linf(3, seed=5), tmp_path / "other.safetensors"))
    a, b = load_file(flow_file), load_file(other)
    assert any(not torch.equal(a[k], b[k]) for k in a)

    def recipe(name, weight, toward=other):
        return write_recipe(tmp_path / f"{name}.yaml", task="flow", stage="interpolate",
                            flow={"checkpoint": flow_file, "toward": toward, "weight": weight},
                            data={"train": {"folders": []}, "val": {"folders": [images], "scale": 2, "max_images": 1}},
                            run={"out": str(tmp_path / name)})

    assert main(["train-flow", recipe("w", 0.25)]) == 0
    out = load_file(tmp_path / "w" / "model.safetensors")
    for k, v in a.items():
        want = (v.double() + 0.25 * (b[k].double() - v.double())).to(v.dtype) if v.is_floating_point() else v
        assert torch.allclose(out[k], want, rtol=0, atol=1e-7), k
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["steps"] == 0 and summary["perceptual"].startswith("weight interpolation: 0.75 x")
    assert float(read_csv(tmp_path / "w" / "val.csv")[0]["val_psnr"]) > 0
    assert main(["train-flow", recipe("w0", 0)]) == 0  # the ends are the two flows themselves
    assert all(torch.equal(v, a[k]) for k, v in load_file(tmp_path / "w0" / "model.safetensors").items())
    assert main(["train-flow", recipe("w1", 1)]) == 0
    assert all(torch.equal(v, b[k]) for k, v in load_file(tmp_path / "w1" / "model.safetensors").items())
    with pytest.raises(ConfigError, match="flow.toward"):
        load_config(write_recipe(tmp_path / "bad.yaml", task="flow", stage="interpolate", flow={"checkpoint": flow_file}))
    wider = str(save_flow(tiny_linf(5), tmp_path / "wider.safetensors"))
    assert main(["train-flow", recipe("mismatch", 0.5, wider)]) != 0
    assert not (tmp_path / "mismatch" / "model.safetensors").exists()


def test_quiet_training_draws_no_progress_bar(tmp_path, images, flow_file, capfd):
    recipe = prior_recipe(tmp_path, images, flow_file, iterations=4)
    assert main(["train-prior", recipe, "-q"]) == 0
    assert "train-prior [" not in capfd.readouterr().err
    assert main(["train-prior", recipe, "--overwrite"]) == 0
    assert "train-prior [" in capfd.readouterr().err  # the bar, without -q


def flow_recipe(tmp_path, images, family, config, crop, iterations=40, lr=1e-3):
    return write_recipe(tmp_path / "flow.yaml", task="flow", flow={"family": family, "config": config},
                        data={"train": {"folders": [images], "repeat": 4}, "crop": crop},
                        optim={"batch_size": 4, "iterations": iterations, "lr": lr},
                        run={"out": str(tmp_path / "run"), "log_every": 2, "ckpt_every": 20, "seed": 0})


def test_linf_patch_flow_nll_falls(tmp_path, images):
    cfg = {"encoder": "edsr-baseline", "encoder_args": {"n_resblocks": 1, "n_feats": 16}, "patch_size": 3,
           "hidden_dim": 32, "flow_layers": 4}
    path = flow_recipe(tmp_path, images, "linf-patch", cfg, {"kind": "linf", "lr_size": 16, "scale_min": 1, "scale_max": 4})
    assert main(["train-flow", path]) == 0
    rows = read_csv(tmp_path / "run" / "log.csv")
    assert _falls(rows, "nll")
    assert load_flow(tmp_path / "run" / "model.safetensors").kind == "linf-patch"


@pytest.mark.slow
def test_srflow_nll_falls_from_scratch(tmp_path, images):
    cfg = {"scale": 4, "nf": 8, "nb": 2, "gc": 4, "K": 2, "taps": [0, 1], "hidden_channels": 16}
    path = flow_recipe(tmp_path, images, "srflow", cfg, {"kind": "srflow", "hr_size": 32, "scale": 4}, lr=5e-4)
    assert main(["train-flow", path]) == 0
    rows = read_csv(tmp_path / "run" / "log.csv")
    assert _falls(rows, "nll") and all(r["skipped"] == "0" for r in rows)


def test_linf_finetune_alternates_nll_and_pixel_steps(tmp_path, images, flow_file):
    path = write_recipe(tmp_path / "ft.yaml", task="flow", stage="finetune", flow={"checkpoint": flow_file},
                        data={"train": {"folders": [images]}, "crop": {"kind": "linf", "lr_size": 16}},
                        optim={"batch_size": 2, "iterations": 6, "lr": 5e-5}, loss={"perceptual": "none"},
                        run={"out": str(tmp_path / "run"), "log_every": 1})
    assert main(["train-flow", path]) == 0
    rows = read_csv(tmp_path / "run" / "log.csv")
    # batches 0, 2, 4 take the NLL step, 1, 3, 5 the L1 (+ perceptual) step; rows are logged after
    # each and hold the latest value of each quantity, so each one changes on its own steps only
    assert [bool(r["nll"]) for r in rows] == [True] * 6 and [bool(r["l1"]) for r in rows] == [False] + [True] * 5
    assert [rows[i]["nll"] == rows[i - 1]["nll"] for i in range(1, 6)] == [True, False, True, False, True]
    assert [rows[i]["l1"] == rows[i - 1]["l1"] for i in range(2, 6)] == [True, False, True, False]


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_weight_average_warms_up_then_follows_its_decay_and_lends_its_weights_only_inside_the_block():
    from flowsr_lp.train.weight_average import WeightAverage

    model = torch.nn.Linear(3, 2)
    frozen = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    ema = WeightAverage(model, 0.99)
    assert set(ema.params) == {"weight", "bias"}  # trainable weights only
    expect = model.weight.detach().clone()
    for n in range(30):
        with torch.no_grad():
            model.weight.add_(1.0)
        d = min(0.99, (1 + n) / (10 + n))
        expect = d * expect + (1 - d) * model.weight.detach()
        ema.update(model)
    assert torch.allclose(ema.params["weight"], expect, atol=1e-5)
    live = model.weight.detach().clone()
    with ema.applied(model):
        assert torch.equal(model.weight, ema.params["weight"])
    assert torch.equal(model.weight, live)
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightAverage(model, 1.0)


def test_ema_run_exports_and_validates_the_average_and_resume_must_keep_the_option(tmp_path, images, flow_file,
                                                                                   capsys):
    path = prior_recipe(tmp_path, images, flow_file, iterations=8, optim={"ema": 0.5}, run={"val_every": 8},
                        data={"val": {"folders": [images], "scale": 2, "max_images": 1}})
    assert main(["train-prior", path]) == 0
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    exported = load_file(tmp_path / "run" / "model.safetensors")
    assert ck["ema"]["updates"] == 8
    for name, avg in ck["ema"]["params"].items():
        assert torch.equal(exported[name], avg)
    assert any(not torch.equal(ck["model"][n], a) for n, a in ck["ema"]["params"].items())
    from flowsr_lp.pipeline import SuperResolver
    from flowsr_lp.train.validate import Validator

    (row,) = read_csv(tmp_path / "run" / "val.csv")
    cfg, average = load_config(path), load_prior(tmp_path / "run" / "model.safetensors")
    live = load_prior(tmp_path / "run" / "model.safetensors")
    live.load_state_dict(ck["model"])
    with torch.no_grad():
        bpd = {name: Validator(cfg, torch.device("cpu"))(SuperResolver(load_flow(flow_file), prior))["val_bpd"]
               for name, prior in (("average", average), ("live", live))}
    assert float(row["val_bpd"]) == pytest.approx(bpd["average"], abs=2e-5)  # val.csv keeps 6 digits
    assert abs(bpd["live"] - bpd["average"]) > 1e-4
    assert main(["train-prior", path, "--resume", "--set", "optim.ema=null"]) != 0
    assert "resume with the same optim.ema" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="optim.ema"):
        load_config(path, ["optim.ema=1.5"])


@pytest.mark.slow
@pytest.mark.parametrize("ema", [None, 0.9])
def test_resume_after_a_kill_ends_with_the_same_weights(tmp_path, images, flow_file, ema):
    full = prior_recipe(tmp_path, images, flow_file, out="full", iterations=16)
    # one thread in every process: float reductions (so bitwise equality) depend on the thread
    # count, and an in-process command (upscale, demo) may have changed torch's
    threads = ["--set", "run.threads=1"] + (["--set", f"optim.ema={ema}"] if ema else [])
    assert main(["train-prior", full, *threads]) == 0
    cut = prior_recipe(tmp_path, images, flow_file, out="cut", iterations=16)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flowsr_lp", "train-prior", cut, "--set", "run.ckpt_every=1",
                             *threads], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once it has saved a checkpoint past step 5
        if ckpt.exists():
            try:
                if torch.load(ckpt, weights_only=True)["step"] >= 5:
                    break
            except Exception:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 5 <= killed_at < 16, "the run should have been killed mid-way"
    assert main(["train-prior", cut, "--resume", "--set", "run.ckpt_every=1", *threads]) == 0
    a, b = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(ckpt)
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the exported average too
    steps = [int(r["step"]) for r in read_csv(tmp_path / "cut" / "log.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == 16  # no duplicated rows after the resume


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, images, flow_file):
    """gloo on the CPU; the EDSR-baseline generator has no BatchNorm, whose per-process
    statistics would differ by design (SyncBatchNorm is GPU-only in PyTorch)."""
    single = prior_recipe(tmp_path, images, flow_file, out="one", iterations=6, generator="edsr")
    double = prior_recipe(tmp_path, images, flow_file, out="two", iterations=6, generator="edsr")
    assert main(["train-prior", single]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    r = subprocess.run(torchrun + ["-m", "flowsr_lp", "train-prior", double], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _weights(tmp_path / "one" / "checkpoint.pt"), _weights(tmp_path / "two" / "checkpoint.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)
    la, lb = read_csv(tmp_path / "one" / "log.csv"), read_csv(tmp_path / "two" / "log.csv")
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb):
        assert abs(float(ra["loss"]) - float(rb["loss"])) < 1e-4


def test_missing_vgg_weights_stop_with_a_clear_message(tmp_path, images, flow_file, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-cache"))  # no cached weights; downloads fail offline
    recipe = prior_recipe(tmp_path, images, flow_file, loss={"perceptual": "vgg", "vgg_weights": str(tmp_path / "nope.pth")})
    assert main(["train-prior", recipe]) == 2
    err = capsys.readouterr().err
    assert "nope.pth: no such file" in err and "--perceptual none" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_perceptual_loss_with_given_vgg_weights(tmp_path, images, flow_file):
    from torchvision.models import vgg19

    torch.save(vgg19(weights=None).state_dict(), tmp_path / "vgg19.pth")  # random stand-in for the ImageNet file
    recipe = prior_recipe(tmp_path, images, flow_file, iterations=4)
    assert main(["train-prior", recipe, "--perceptual", "vgg", "--vgg-weights", str(tmp_path / "vgg19.pth")]) == 0
    rows = read_csv(tmp_path / "run" / "log.csv")
    assert all(float(r["percep"]) > 0 for r in rows)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["perceptual"] == "vgg19-imagenet"


def test_recipe_errors_are_clear(tmp_path, images, flow_file):
    recipe = prior_recipe(tmp_path, images, flow_file)
    with pytest.raises(ConfigError, match="unknown config key optim.learning_rate"):
        load_config(recipe, ["optim.learning_rate=1"], "prior")
    with pytest.raises(ConfigError, match="train-prior"):
        load_config(recipe, [], "flow")
    cfg = load_config(recipe, ["optim.lr=5e-4", "data.train.repeat=2"], "prior")
    assert cfg["optim"]["lr"] == 5e-4 and cfg["data"]["train"]["repeat"] == 2


@pytest.mark.parametrize("crops", [LINFCrops(16, 1, 4), LINFLPCrops(24, 24, 1, 3), SRFlowCrops(32, 4)])
def test_batches_are_reproducible_and_ranks_split_the_global_batch(images, crops):
    folder = ImageFolder([images], repeat=2)
    full = EpochBatches(folder, crops, batch_size=4, seed=7)
    again = EpochBatches(folder, crops, batch_size=4, seed=7)
    parts = [EpochBatches(folder, crops, batch_size=4, seed=7, rank=r, world=2) for r in range(2)]
    for b in (0, 3):
        x, y = full[b], again[b]
        assert torch.equal(x["hr"], y["hr"]) and torch.equal(x["lr"], y["lr"])
        assert torch.equal(torch.cat([p[b]["hr"] for p in parts]), x["hr"])
        assert x["hr"].shape[-1] == round(x["lr"].shape[-1] * x["scale"]) or "window" in x
    assert not torch.equal(full[0]["hr"], full[1]["hr"])
    full.set_epoch(1)
    assert not torch.equal(full[0]["hr"], again[0]["hr"])


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe):
    cfg = load_config(recipe)
    # a stage recipe (NAME-ft.yaml, NAME-ft2.yaml, NAME-wise.yaml...) trains the model NAME;
    # an experiment (configs/cpu/experiments/NAME-WHAT.yaml) names the model it varies
    assert cfg["task"] in ("flow", "prior")
    if recipe.parent.name == "experiments":
        assert recipe.stem.startswith(cfg["name"] + "-")
    else:
        assert cfg["name"] == re.sub(r"-(ft\d*|scale|stats|nll|wide|wise|x\d+[a-z]*|specialists|residual)$", "", recipe.stem)


def test_unreachable_download_names_the_way_out(monkeypatch):
    from urllib.error import URLError

    from torchvision.models import VGG19_Weights

    from flowsr_lp.nets.vgg import VGGWeightsMissing, load_vgg_state

    def offline(*a, **k):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(type(VGG19_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(VGGWeightsMissing, match="--vgg-weights PATH.*--perceptual none"):
        load_vgg_state(None)


def test_gradient_loss_term_is_logged_and_labelled(tmp_path, images, flow_file):
    recipe = prior_recipe(tmp_path, images, flow_file, iterations=4, loss={"perceptual": "none", "gradient_weight": 1.0})
    assert main(["train-prior", recipe]) == 0
    rows = read_csv(tmp_path / "run" / "log.csv")
    assert all(float(r["grad"]) > 0 for r in rows)
    label = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["perceptual"]
    assert label == "none (pixel L1 x1 + latent L1 x0.1 + gradient L1 x1)"


def test_pixel_l2_loss_is_logged_labelled_and_checked(tmp_path, images, flow_file):
    recipe = prior_recipe(tmp_path, images, flow_file, iterations=4,
                          loss={"perceptual": "none", "pixel_loss": "l2", "pixel_weight": 10.0})
    assert main(["train-prior", recipe]) == 0
    rows = read_csv(tmp_path / "run" / "log.csv")
    assert all(float(r["l2"]) > 0 for r in rows) and not any(r.get("l1") for r in rows)
    label = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["perceptual"]
    assert label == "none (pixel L2 x10 + latent L1 x0)"
    with pytest.raises(ConfigError, match="pixel_loss must be one of l1, l2"):
        load_config(recipe, ["loss.pixel_loss=mse"], "prior")
    flow_recipe = Path(__file__).parents[1] / "configs" / "cpu" / "linf-small-ft.yaml"
    with pytest.raises(ConfigError, match="pixel_loss is a prior recipe's option"):
        load_config(flow_recipe, ["loss.pixel_loss=l2"], "flow")


def test_a_scale_head_trained_in_the_same_run_leaves_mu_bit_for_bit_as_without_it(tmp_path, images, flow_file):
    # issue 20, item 3: the head reads detached features and Adam is per parameter, so mu's
    # weights follow the same path with or without a head (LINF-LP builds the head last, so
    # mu's initial weights are the same too; SRFlow-LP builds part i's head before part i + 1,
    # so there the same holds from a common start, such as a grown head's)
    unet = {"family": "linf-lp", "config": {"generator": "unet", "dim": 8, "depth": 2}}
    headed = {"family": "linf-lp", "config": {**unet["config"], "scale_head": True}}
    for out, prior in (("plain", unet), ("headed", headed)):
        assert main(["train-prior", prior_recipe(tmp_path, images, flow_file, out=out, iterations=6,
                                                 prior=prior)]) == 0
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    with_head = load_file(tmp_path / "headed" / "model.safetensors")
    assert any(k.startswith("scale_head") for k in with_head) and not any(k.startswith("scale_head") for k in plain)
    assert all(torch.equal(with_head[k], v) for k, v in plain.items())
    assert float(read_csv(tmp_path / "headed" / "log.csv")[-1]["scale_nll"]) > 0
