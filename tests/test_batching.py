"""Same-size images batched through one SuperResolver (the CLI's --batch-size): each image
keeps its own seed, so a batch gives what the images give one by one (up to the last bits
that oneDNN's batch-size-dependent kernels change)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from flowsr_lp import SuperResolver, TemperatureSampling, load_flow, load_prior
from flowsr_lp.cli import main
from flowsr_lp.evaluate import EvalOptions, evaluate
from flowsr_lp.tiles import batch_limit

from conftest import REFERENCE, need

SEEDS = [5, 5, 6]


def _models(name):
    if name.startswith("srflow"):
        opt = json.loads(need(REFERENCE / f"{name}.opt.json").read_text())
        flow = load_flow(REFERENCE / f"{name}.pth", taps=opt["network_G"]["flow"]["stackRRDB"]["blocks"])
    else:
        flow = load_flow(need(REFERENCE / f"{name}.pth"))
    return flow, load_prior(need(REFERENCE / f"{name}-LP.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linf-patch-edsr-baseline", "srflow-4x-nb4-k2"])
def test_a_batch_gives_what_each_image_gives_alone(name, no_grad):
    flow, prior = _models(name)
    lrs = torch.rand(3, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    for resolver, strategies, atol in [
        (SuperResolver(flow), lambda seeds: TemperatureSampling(0.0, seed=seeds), 1e-5),
        (SuperResolver(flow), lambda seeds: TemperatureSampling(0.7, seed=seeds), 1e-4),
        # random-weight latent modules amplify their rounding differences ~25x on decoding
        (SuperResolver(flow, prior), lambda seeds: None, 2e-3),
    ]:
        batch = resolver(lrs, scale=4, strategy=strategies(SEEDS)).images
        alone = torch.cat([resolver(lrs[i : i + 1], scale=4, strategy=strategies(s)).images
                           for i, s in enumerate(SEEDS)])
        torch.testing.assert_close(batch, alone, atol=atol, rtol=0)
    # one generator for the whole batch would give the second image other noise than alone
    shared = SuperResolver(flow)(lrs, scale=4, strategy=TemperatureSampling(0.7, seed=5)).images
    alone = SuperResolver(flow)(lrs[1:2], scale=4, strategy=TemperatureSampling(0.7, seed=5)).images
    assert (shared[1] - alone[0]).abs().max() > 0.01


def test_one_seed_per_batch_item_is_checked():
    flow, _ = _models("linf-patch-edsr-baseline")
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        SuperResolver(flow)(torch.rand(3, 3, 8, 8), scale=2, strategy=TemperatureSampling(0.5, seed=[1, 2]))


def test_batch_limit_keeps_memory_of_one_whole_image():
    assert batch_limit((64, 64), 8) == 8
    assert batch_limit((300, 300), 8) == 2  # at most 512 x 512 LR pixels in a batch
    assert batch_limit((512, 512), 8) == batch_limit((1024, 1024), 8) == 1
    assert batch_limit((64, 64), 1) == 1


def _images(folder, sizes):
    """Random RGB PNGs im0.png, im1.png, ... of the given (h, w) sizes."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def _batch_sizes(monkeypatch) -> list:
    """The batch size of every SuperResolver.generate call from now on."""
    calls = []
    generate = SuperResolver.generate
    monkeypatch.setattr(SuperResolver, "generate", lambda self, p, s=None: calls.append(p.lr.shape[0])
                        or generate(self, p, s))
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--tau", "0"], ["--tau", "0.6", "--seed", "3"], ["--prior"]])
def test_cli_batches_same_size_inputs_with_unchanged_results(tmp_path, capsys, monkeypatch, extra):
    src = _images(tmp_path / "in", [(20, 28), (24, 24), (20, 28), (20, 28)])
    if extra == ["--prior"]:
        extra = ["--prior", str(need(REFERENCE / "linf-patch-edsr-baseline-LP.pth"))]
    flow = need(REFERENCE / "linf-patch-edsr-baseline.pth")
    calls = _batch_sizes(monkeypatch)
    outs = {}
    for batch in (1, 8):
        calls.clear()
        args = ["upscale", "--quiet", str(src), "--flow", str(flow),
                "--scale", "4", "--batch-size", str(batch), "-o", str(tmp_path / f"b{batch}"), *extra]
        assert main(args) == 0, capsys.readouterr().err
        assert sorted(calls) == ([1, 1, 1, 1] if batch == 1 else [1, 3])
        outs[batch] = {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in (tmp_path / f"b{batch}").iterdir()}
    assert sorted(outs[1]) == sorted(outs[8]) == [f"im{i}.png" for i in range(4)]
    for name, img in outs[1].items():
        diff = np.abs(img - outs[8][name])
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, name  # a last-bit rounding at most


@pytest.mark.slow
def test_evaluate_batches_same_size_images_with_unchanged_rows(tmp_path, monkeypatch):
    flow, prior = _models("linf-patch-edsr-baseline")
    data = _images(tmp_path / "HRset", [(64, 64), (48, 64), (64, 64), (64, 64), (48, 64)])
    calls = _batch_sizes(monkeypatch)
    rows = {}
    for batch in (1, 8):
        calls.clear()
        opts = EvalOptions(data=[str(data)], taus=[0.0, 0.6], runs=2, use_lpips=False, report_images=0,
                           batch_size=batch)
        rows[batch] = sorted(evaluate(flow, prior, opts, tmp_path / "out", progress=False)[0],
                             key=lambda r: (r["image"], r["method"], r["run"]))
        # per image: tau 0 (one run), tau 0.6 (two runs), the prior
        assert sorted(calls) == ([1] * 20 if batch == 1 else [2] * 4 + [3] * 4)
    assert len(rows[1]) == len(rows[8]) == 5 * 4
    for a, b in zip(rows[1], rows[8]):
        assert (a["image"], a["method"], a["run"], a["seed"], a["finite"]) == \
               (b["image"], b["method"], b["run"], b["seed"], b["finite"])
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-3), (a["image"], a["method"])
