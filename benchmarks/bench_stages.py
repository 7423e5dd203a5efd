"""Where the time of one upscale goes, stage by stage, and what bounds the learned prior's
overhead: LINF-LP x4 of a 64x64 LR (full-size random weights) with the tau path beside it.

    python benchmarks/bench_stages.py [--precision bf16] [--lr 64] [--threads 2] [--repeats 15]

Stages (median wall ms): conditioning (encoder + conditioning MLP), initial prior, latent
module, decode; the tau path is conditioning + sampling and decoding. Then the latent
module's convolution work (GFLOP, counted with hooks), this machine's convolution speed at
the same precision on the latent module's own layer shapes, and the lowest LP / tau ratio
that speed allows: (tau path + initial prior + latent-module GFLOP at that speed) / tau path."""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import flowsr_lp
from common import build, header, load, median
from flowsr_lp.pipeline import TemperatureSampling
from flowsr_lp.precision import reduced
from flowsr_lp.priors.tiling import predict_latent


def conv_flops(module: nn.Module, run) -> tuple[float, list[tuple]]:
    """(GFLOP of all Conv2d calls in `run()`, each call's (input, weight, stride, padding))."""
    total, shapes = [0.0], []

    def hook(m, args, out):
        k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
        total[0] += 2 * k * out.numel()
        shapes.append((tuple(args[0].shape), tuple(m.weight.shape), m.stride, m.padding))

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return total[0] / 1e9, shapes


def conv_speed(shapes: list[tuple], dtype: torch.dtype, repeats: int = 20) -> float:
    """GFLOP/s of the given convolutions run back to back, alone (channels-last, `dtype`)."""
    calls = []
    for x_shape, w_shape, stride, padding in shapes:
        x = torch.randn(x_shape).to(dtype).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(w_shape) * 0.05).to(dtype)
        out_hw = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip(x_shape[-2:], padding, w_shape[-2:], stride)]
        calls.append((x, w, stride, padding, 2 * w_shape[1] * w_shape[2] * w_shape[3] * w_shape[0] * out_hw[0] * out_hw[1] * x_shape[0]))
    flops = sum(c[-1] for c in calls)
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        for x, w, stride, padding, _ in calls:
            F.conv2d(x, w, stride=stride, padding=padding)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return flops / median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--lr", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    header(f"stages of LINF-LP x4, LR {a.lr}x{a.lr}, {a.precision}")
    torch.manual_seed(0)
    flow, prior = build(flowsr_lp, "linf-lp")
    resolver = flowsr_lp.SuperResolver(flow, prior, precision=a.precision)
    lr = torch.rand(1, 3, a.lr, a.lr)
    kind = prior.config.initial_prior
    times: dict[str, list[float]] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    @torch.no_grad()
    def once():
        p = timed("conditioning", lambda: resolver.prepare(lr, scale=4))
        with reduced(resolver.dtype, resolver.device):
            z0 = timed("initial prior", lambda: flow.initial_prior(p.lr, p.ctx, kind))
            z = timed("latent module", lambda: predict_latent(
                prior, tuple(t.contiguous(memory_format=torch.channels_last) for t in z0),
                p.lr.contiguous(memory_format=torch.channels_last)))
        timed("decode", lambda: flow.decode(z, p.ctx))

        def tau_path():
            with reduced(resolver.dtype, resolver.device):
                zt = TemperatureSampling(0.8, generator=torch.Generator().manual_seed(0)).latent(flow, p.lr, p.ctx, 4)
            return flow.decode(zt, p.ctx)

        timed("sampling + decode (tau path)", tau_path)

    for _ in range(3):
        once()
    times.clear()
    for _ in range(a.repeats):
        once()
    ms = {k: median(v) * 1e3 for k, v in times.items()}
    print(f"median of {a.repeats} runs ({load()} at the end), wall ms:")
    for k, v in ms.items():
        print(f"  {k:<30} {v:7.2f}")
    tau = ms["conditioning"] + ms["sampling + decode (tau path)"]
    lp = ms["conditioning"] + ms["initial prior"] + ms["latent module"] + ms["decode"]
    print(f"  tau path {tau:.1f} ms, LP path {lp:.1f} ms: LP / tau {lp / tau:.2f}x")

    with torch.no_grad(), reduced(resolver.dtype, resolver.device):
        p = resolver.prepare(lr, scale=4)
        z0 = flow.initial_prior(p.lr, p.ctx, kind)
        gflop, shapes = conv_flops(prior, lambda: predict_latent(prior, z0, p.lr))
    speed = conv_speed(shapes, resolver.dtype)
    floor_ms = gflop / speed * 1e3
    print(f"latent module: {gflop:.2f} GFLOP of convolution in {len(shapes)} calls; this machine runs "
          f"those calls alone at {speed:.0f} GFLOP/s ({a.precision}), so they need at least {floor_ms:.1f} ms "
          f"(measured {ms['latent module']:.1f} ms with everything else in the module)")
    print(f"lowest LP / tau ratio at that speed: (tau {tau:.1f} + initial prior {ms['initial prior']:.1f} "
          f"+ {floor_ms:.1f}) / {tau:.1f} = {(tau + ms['initial prior'] + floor_ms) / tau:.2f}x")


if __name__ == "__main__":
    main()
