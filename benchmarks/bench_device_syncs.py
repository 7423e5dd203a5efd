"""Issue 23's item-6 fixes measured on their own, before (an earlier copy of the package)
against after, calls alternated in one process:
  finite:  the finite-gradient check of a training step over RRDB-LINF's parameter tensors
           (one read of a device flag per tensor before, one per step after);
  decode:  LINF fine-tuning's pixel step through the flow (decode of the tau-0 latent,
           forward + backward): full-size EDSR-baseline 3x3 LINF, batch 16, LR 48 x4 (the
           recipe's batch), 8 chunks of 8192 queries, float64 inverses per chunk before,
           per call after;
  tiles:   `upscale_tiled` (LINF 3x3 full-size, LR 96 x4 in 48-pixel tiles): per-tile copies
           to the CPU before, one after (on the CPU both are no-ops: a regression check).
On the CPU a "device read" costs no GPU wait, so these figures bound the Python and
arithmetic overhead only; the GPU gains need `gpu_check.py`.

    python benchmarks/bench_device_syncs.py --before REV_OR_DIR [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import tempfile
import types
from pathlib import Path

import torch

import flowsr_lp
from bench_before_after import import_before
from common import alternate, build, header, load, report


def finite_check(pkg, flow):
    trainer = __import__(f"{pkg.__name__}.train.trainer", fromlist=["Trainer"])
    if hasattr(trainer, "grads_finite"):
        return lambda: trainer.grads_finite(flow.parameters())
    return lambda: trainer.Trainer._grads_finite(types.SimpleNamespace(model=flow))


def decode_step(pkg, flow, batch: int, lr_size: int):
    """Forward + backward of the flow part of LINF fine-tuning's pixel step."""
    torch.manual_seed(0)
    lr = torch.rand(batch, 3, lr_size, lr_size)
    hr = torch.rand(batch, 3, 4 * lr_size, 4 * lr_size)
    flow.train()
    with torch.no_grad():  # the conditioning network is not what changed
        ctx = flow.condition(lr, tuple(hr.shape[-2:]))

    def run():
        flow.zero_grad(set_to_none=True)
        sr = flow.decode(flow.sample_latent(ctx, 0.0), ctx)
        (sr - hr).abs().mean().backward()
        return sr

    return run


def count_inverses(pkg, fn) -> int:
    layers = __import__(f"{pkg.__name__}.flows.layers", fromlist=["inverse_f64"])
    original, calls = layers.inverse_f64, []
    layers.inverse_f64 = lambda w: calls.append(1) or original(w)
    try:
        fn()
    finally:
        layers.inverse_f64 = original
    return len(calls)


def tiled(pkg, flow):
    resolver = pkg.SuperResolver(flow)
    tiles = __import__(f"{pkg.__name__}.tiles", fromlist=["upscale_tiled"])
    lr = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    strategy = pkg.TemperatureSampling(0.8, seed=0)
    if not hasattr(tiles, "upscale_tiled"):  # issue 21: tiles are SuperResolver's (noise drawn whole, then sliced)
        return lambda: resolver(lr, scale=4, strategy=strategy, tile=48).images
    return lambda: tiles.upscale_tiled(resolver, lr, 4, tile=48, strategy=strategy, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="finite,decode,tiles")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    header(f"item-6 syncs before/after, before = {a.before}")
    with tempfile.TemporaryDirectory() as tmp:
        before = import_before(a.before, Path(tmp))
        only = a.only.split(",")
        if "finite" in only:
            new, _ = build(flowsr_lp, "linf-rrdb")
            old, _ = build(before, "linf-rrdb")
            for p in list(new.parameters()) + list(old.parameters()):
                p.grad = torch.randn_like(p)
            n = sum(1 for p in new.parameters() if p.grad is not None)
            assert finite_check(before, old)() and finite_check(flowsr_lp, new)()
            print(f"finite check over {n} gradient tensors (RRDB-LINF):")
            report(alternate({"before": finite_check(before, old), "after": finite_check(flowsr_lp, new)},
                             a.repeats * 20), "before")
        if "decode" in only:
            torch.manual_seed(0)
            new, _ = build(flowsr_lp, "linf-patch")
            old, _ = build(before, "linf-patch")
            old.load_state_dict(new.state_dict())
            f_new, f_old = decode_step(flowsr_lp, new, 16, 48), decode_step(before, old, 16, 48)
            diff = (f_new() - f_old()).abs().max().item()
            grads = max((p.grad - q.grad).abs().max().item() for p, q in zip(new.imnet.parameters(),
                                                                               old.imnet.parameters()))
            print(f"fine-tuning pixel step, flow part: float64 inverses per step before "
                  f"{count_inverses(before, f_old)}, after {count_inverses(flowsr_lp, f_new)}; "
                  f"max |after - before| output {diff:.1e}, imnet gradients {grads:.1e}")
            report(alternate({"before": f_old, "after": f_new}, a.repeats), "before")
        if "tiles" in only:
            torch.manual_seed(0)
            new, _ = build(flowsr_lp, "linf-patch")
            old, _ = build(before, "linf-patch")
            old.load_state_dict(new.state_dict())
            t_new, t_old = tiled(flowsr_lp, new), tiled(before, old)
            print(f"upscale_tiled, 4 tiles: max |after - before| = {(t_new() - t_old()).abs().max().item():.1e}")
            report(alternate({"before": t_old, "after": t_new}, a.repeats), "before")
    print(f"{load()} at the end")


if __name__ == "__main__":
    main()
