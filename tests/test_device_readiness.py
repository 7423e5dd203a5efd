"""What would break or drift on a GPU (issue 23), tested on the CPU through its logic: TF32
inside flow transforms, torchrun device and timeout, the prior's memory budget, out-of-memory
recovery, device checks, float64 placement, bf16 support, weight caches, resumption."""
import datetime
import logging
import threading

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from skimage import data as skdata

from flowsr_lp import distributed, precision
from flowsr_lp.errors import UsageError
from flowsr_lp.evaluate import EvalOptions, evaluate
from flowsr_lp.flows import layers
from flowsr_lp.flows.layers import InvertibleLinear
from flowsr_lp.flows.linf import LINF, ConditionalAffine
from flowsr_lp.pipeline import SuperResolver, TemperatureSampling
from flowsr_lp.priors.tiling import predict_latent
from flowsr_lp.train.trainer import grads_finite, restore_cuda_rng
from flowsr_lp.upscale import upscale_files

from helpers import tiny_linf, tiny_linf_prior, tiny_srflow

FLAGS = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)


# ---- 1. TF32 ---------------------------------------------------------------------------
@pytest.fixture
def tf32_on():
    saved = [f.fp32_precision for f in FLAGS]
    for f in FLAGS:
        f.fp32_precision = "tf32"
    yield
    for f, v in zip(FLAGS, saved):
        f.fp32_precision = v


def _recording(monkeypatch, cls, name, seen):
    original = getattr(cls, name)

    def run(self, *args, **kwargs):
        seen.append(tuple(f.fp32_precision for f in FLAGS))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, run)


def test_flow_transforms_run_without_tf32_and_leave_the_flags_as_they_were(tf32_on, monkeypatch):
    seen = []
    _recording(monkeypatch, ConditionalAffine, "invert", seen)  # inside LINF's inverse
    _recording(monkeypatch, layers.InvConv1x1, "inverse", seen)  # inside SRFlow's inverse
    lr = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        SuperResolver(tiny_linf())(lr, scale=2, strategy=TemperatureSampling(0.5, seed=0))
        SuperResolver(tiny_srflow())(lr, strategy=TemperatureSampling(0.5, seed=0))
    assert len(seen) > 4 and set(seen) == {("ieee", "ieee")}
    assert [f.fp32_precision for f in FLAGS] == ["tf32", "tf32"]


def test_tf32_flags_come_back_after_an_error_and_after_the_last_thread_leaves(tf32_on):
    with pytest.raises(KeyError):
        with precision.full_precision("cpu"):
            raise KeyError
    assert [f.fp32_precision for f in FLAGS] == ["tf32", "tf32"]
    entered, release = threading.Event(), threading.Event()

    def other():
        with precision.exact_float32:
            entered.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    entered.wait(10)
    with precision.exact_float32:
        pass
    assert FLAGS[1].fp32_precision == "ieee"  # the other thread is still inside
    release.set()
    t.join()
    assert [f.fp32_precision for f in FLAGS] == ["tf32", "tf32"]


# ---- 2. torchrun -------------------------------------------------------------------------
def test_local_rank_must_name_a_visible_gpu():
    assert distributed.local_cuda_device("1", 2) == torch.device("cuda", 1)
    assert distributed.local_cuda_device(None, 1) == torch.device("cuda", 0)
    for bad in ("1", "-1", "x"):
        with pytest.raises(UsageError, match=f"LOCAL_RANK={bad} but this process sees 1 CUDA device"):
            distributed.local_cuda_device(bad, 1)


@pytest.fixture
def two_processes(monkeypatch):
    """A torchrun-like environment whose process group is only recorded."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    return calls


def test_one_gpu_per_rank_with_a_high_local_rank_is_a_usage_error(two_processes, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device reached"))
    with pytest.raises(UsageError, match="LOCAL_RANK=1 but this process sees 1 CUDA device"):
        distributed.setup_distributed("cuda")
    assert two_processes == []


def test_process_group_gets_the_documented_timeout(two_processes, monkeypatch):
    assert distributed.setup_distributed("cpu")[:2] == (0, 2)
    assert two_processes == [("gloo", {"timeout": datetime.timedelta(minutes=distributed.DEFAULT_TIMEOUT_MIN)})]
    assert distributed.DEFAULT_TIMEOUT_MIN > 10  # NCCL's default
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7.5")
    distributed.setup_distributed("cpu")
    assert two_processes[-1][1]["timeout"] == datetime.timedelta(minutes=7.5)
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(UsageError, match=distributed.TIMEOUT_ENV):
            distributed.setup_distributed("cpu")


def test_mps_under_torchrun_is_refused(two_processes, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(UsageError, match="MPS"):
        distributed.setup_distributed("mps")
    assert two_processes == []


# ---- 3. memory -----------------------------------------------------------------------------
class _Recording(torch.nn.Module):
    """A latent module wrapper that records how many positions each call computes."""

    def __init__(self, prior):
        super().__init__()
        self.prior, self.latent_channels, self.positions = prior, prior.latent_channels, []

    def lr_features(self, *args):
        return self.prior.lr_features(*args)

    def generate(self, z0, feat, i):
        self.positions.append(z0.shape[0] * z0.shape[-2] * z0.shape[-1])
        return self.prior.generate(z0, feat, i)


def test_prior_budget_counts_the_batch():
    prior = _Recording(tiny_linf_prior("unet"))
    z0, lr = torch.randn(8, 27, 16, 16), torch.rand(8, 3, 24, 24)
    with torch.no_grad():
        whole = predict_latent(prior, (z0,), lr)[0]
        assert prior.positions == [8 * 256]
        prior.positions.clear()
        split = predict_latent(prior, (z0,), lr, max_pixels=1024)[0]  # 4 whole maps fit
    assert prior.positions == [1024, 1024]
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-5)
    prior.positions.clear()
    with torch.no_grad():  # a map over the budget alone: tiles, as many items per call as fit
        predict_latent(prior, (torch.randn(3, 27, 40, 40),), torch.rand(3, 3, 60, 60), max_pixels=1200, tile=16,
                       overlap=4, margin=4)
    # 3x3 tiles of up to 24x24 (16 + margins) of 2 items, then of the third
    assert len(prior.positions) == 18 and max(prior.positions) == 2 * 576


def _photos(folder, n, side):
    folder.mkdir(parents=True)
    for i in range(n):
        img = Image.fromarray(skdata.astronaut()).rotate(90 * i).resize((side, side), Image.BICUBIC)
        img.save(folder / f"p{i}.png")
    return sorted(folder.iterdir())


@pytest.fixture
def oom_above(monkeypatch):
    """LINF's `condition` (the whole image's, or a tile's) raises an out-of-memory above
    `limit[0]` LR pixels per call; `calls` records the calls over 64x64 LR pixels (not the
    tile grid's tiny shape probes)."""
    limit, calls = [None], []
    original = LINF.condition

    def condition(self, lr, *args, **kwargs):
        n = lr.shape[0] * lr.shape[-2] * lr.shape[-1]
        if n > 64 * 64:
            calls.append(n)
        if limit[0] is not None and n > limit[0]:
            raise torch.OutOfMemoryError(f"CUDA out of memory (stub: {n} LR pixels)")
        return original(self, lr, *args, **kwargs)

    monkeypatch.setattr(LINF, "condition", condition)
    return limit, calls


def test_upscale_out_of_memory_retries_alone_then_in_tiles(tmp_path, oom_above, caplog):
    limit, calls = oom_above
    srcs = _photos(tmp_path / "in", 2, 300)  # 300x300 LR: a batch of 2, or each alone in 2x2 tiles
    resolver = SuperResolver(tiny_linf())
    outs = [[tmp_path / run / p.name for p in srcs] for run in ("plain", "oom")]
    assert upscale_files(resolver, srcs, outs[0], scale=2, tau=0, progress=False, batch_size=8) == 0
    limit[0], calls[:] = 85_000, []
    with caplog.at_level(logging.WARNING):
        assert upscale_files(resolver, srcs, outs[1], scale=2, tau=0, progress=False, batch_size=8) == 0
    # the batch, then each image alone, then its 4 tiles: 255 + 33 LR pixels of context (LINF 3x3 at x2
    # tiles in steps of 3), and the 45 left + 33
    assert calls == [180_000] + 2 * [90_000, 288 * 288, 288 * 78, 78 * 288, 78 * 78]
    assert "running them one by one" in caplog.text and "retrying in tiles" in caplog.text
    for plain, tiled in zip(*outs):  # tau 0: the tiles give the whole image's pixels
        a, b = (np.asarray(Image.open(p), dtype=int) for p in (plain, tiled))
        assert a.shape == b.shape == (600, 600, 3) and np.abs(a - b).max() <= 1


def test_evaluate_out_of_memory_retries_alone_then_in_tiles_and_loses_no_row(tmp_path, oom_above, caplog):
    limit, calls = oom_above
    _photos(tmp_path / "set" / "HR", 2, 600)
    opts = EvalOptions(data=[str(tmp_path / "set")], scales=[2.0], taus=[0.0], use_lpips=False, report_images=0)
    flow = tiny_linf()
    plain, _, _ = evaluate(flow, None, opts, tmp_path / "a", progress=False)
    limit[0] = 85_000
    with caplog.at_level(logging.WARNING):
        rows, _, _ = evaluate(flow, None, opts, tmp_path / "b", progress=False)
    assert calls.count(180_000) == 1 + 1 and calls.count(90_000) == 2  # batch ok, then batch and each alone failed
    assert "one by one" in caplog.text
    assert [(r["image"], r["method"]) for r in rows] == [(r["image"], r["method"]) for r in plain]
    for a, b in zip(plain, rows):
        assert b["finite"] and abs(a["psnr"] - b["psnr"]) < 0.01


# ---- 4. devices ----------------------------------------------------------------------------
def test_prior_on_another_device_than_the_flow_is_a_usage_error():
    prior = tiny_linf_prior("unet").to("meta")
    with pytest.raises(UsageError, match="latent module is on meta but the flow is on cpu"):
        SuperResolver(tiny_linf(), prior)


def test_float64_work_moves_to_the_cpu_only_for_devices_without_float64(monkeypatch):
    assert precision.float64_device("mps") == torch.device("cpu")
    assert precision.float64_device("cuda:1") == torch.device("cuda", 1)
    x = torch.rand(3, 3, dtype=torch.float16)
    assert precision.to_float64(x).dtype == torch.float64
    # every float64 site goes through to_float64: the weight inverse, imresize, the metrics
    seen = []
    original = precision.to_float64

    def spy(t):
        seen.append(t.device)
        return original(t)

    from flowsr_lp.data import resize
    from flowsr_lp.metrics import fidelity, generative
    for module in (layers, resize, fidelity, generative):
        monkeypatch.setattr(module, "to_float64", spy)
    w = torch.randn(5, 5) + 3 * torch.eye(5)
    torch.testing.assert_close(layers.inverse_f64(w) @ w, torch.eye(5), atol=1e-5, rtol=0)
    img = torch.rand(1, 3, 16, 16)
    resize.imresize(img, out_size=(8, 8))
    fidelity.psnr(img, img.flip(-1))
    generative.grid_score(img, torch.rand(1, 3, 8, 8))
    assert len(seen) >= 5


def test_bf16_is_refused_on_a_gpu_without_it_and_each_gpu_is_asked(monkeypatch):
    caps = {0: (8, 0), 1: (7, 5)}
    asked = []

    def capability(device=None):
        asked.append(torch.device(device).index)
        return caps[torch.device(device).index]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "stub")
    assert precision.has_bf16_units("cuda:0") and not precision.has_bf16_units("cuda:1")
    assert asked == [0, 1]  # the device given, not the current one
    assert precision.resolve_precision("bf16", "cuda:0") == torch.bfloat16
    assert precision.resolve_precision("auto", "cuda:1") == torch.float32
    with pytest.raises(UsageError, match=r"cuda:1 has no bf16 support \(compute capability 7.5"):
        precision.resolve_precision("bf16", "cuda:1")
    assert precision.resolve_precision("fp16", "cuda:1") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # nothing to ask: the device check says so
    assert precision.resolve_precision("bf16", "cuda:1") == torch.bfloat16


def test_weight_cache_sees_a_new_weight_at_a_reused_address():
    torch.manual_seed(0)
    lin = InvertibleLinear(16).eval()
    stale = 0
    with torch.no_grad():
        for _ in range(20):
            lin.weight_inverse()
            lin._weight.data = torch.empty(0)  # frees the old weight: the allocator hands its block out again
            lin._weight.data = torch.randn(16, 16) + 4 * torch.eye(16)
            stale += not torch.allclose(lin.weight_inverse() @ lin._weight, torch.eye(16), atol=1e-4)
    assert stale == 0


def test_training_decode_inverts_each_weight_once_per_call_not_per_chunk(monkeypatch):
    calls = []
    original = layers.inverse_f64
    monkeypatch.setattr(layers, "inverse_f64", lambda w: calls.append(1) or original(w))
    flow = tiny_linf().train()
    flow.chunk_queries = 16  # a 12x12 LR at x3: 12 rows of 12 queries -> 12 chunks
    lr = torch.rand(1, 3, 12, 12)

    def grads():
        flow.zero_grad()
        ctx = flow.condition(lr, (36, 36))
        flow.decode(flow.sample_latent(ctx, 0.0), ctx).square().mean().backward()
        return [p.grad.clone() for p in flow.imnet.parameters()]

    first = grads()
    assert len(calls) == len(flow.imnet.linears) + 1
    again = grads()  # weights unchanged (no optimizer step): no graph of the first call is reused
    flow.chunk_queries = 1 << 20
    whole = grads()
    for a, b, c in zip(first, again, whole):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)
    assert all(c.cache._held is None for c in flow.imnet.modules() if isinstance(c, layers.CachingLayer))


# ---- 5. resumption ---------------------------------------------------------------------------
def test_resuming_with_another_number_of_gpus_restores_what_both_have(caplog):
    restored = []
    with caplog.at_level(logging.WARNING):
        restore_cuda_rng(["s0", "s1"], 2, lambda s, i: restored.append((s, i)))
    assert restored == [("s0", 0), ("s1", 1)] and caplog.text == ""
    restored.clear()
    with caplog.at_level(logging.WARNING):
        restore_cuda_rng(["s0", "s1", "s2", "s3"], 1, lambda s, i: restored.append((s, i)))
    assert restored == [("s0", 0)]
    assert "random state of 4 GPU(s), this run sees 1" in caplog.text


def test_gradient_finite_check():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    assert grads_finite([a, b])  # no gradients yet
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    assert grads_finite([a, b])
    b.grad[1] = float("nan")
    assert not grads_finite([a, b])
    b.grad[1] = float("inf")
    assert not grads_finite([a, b])
