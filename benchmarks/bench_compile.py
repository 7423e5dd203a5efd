"""Does `torch.compile` pay? The same upscale eager and with the heavy networks compiled
(the flow's encoder / RRDB trunk and the latent module's generator; inductor, weights frozen
as constants), alternated in one process: the compile time of the first call, the time per
image after it, how many images it takes to win the compile time back, and the largest
output difference. Any torch device.

    python benchmarks/bench_compile.py [--case linf-lp] [--lr 64] [--precision bf16] [--threads 2]
                                       [--repeats 9] [--device cpu]

FlowSR-LP does not offer a compile option: on the CPU of the project's machines this run
found no gain worth the compile time (see benchmarks/README.md); run it where that may
differ (a GPU) before adding one."""
from __future__ import annotations

import argparse
import copy
import time

import torch

import flowsr_lp
from common import CASES, alternate, build, header, load, median, paired_ratio, sync


def compiled_copy(flow, prior):
    """Copies of flow and prior whose conv-heavy parts run through torch.compile."""
    flow, prior = copy.deepcopy(flow), copy.deepcopy(prior) if prior is not None else None
    options = {"freezing": True}  # weights as constants: folded and pre-cast once
    if hasattr(flow, "encoder"):
        flow.encoder = torch.compile(flow.encoder, options=options)
    if hasattr(flow, "RRDB"):
        flow.RRDB.trunk = torch.compile(flow.RRDB.trunk, options=options)
    if prior is not None:
        name = "generate" if hasattr(prior, "generate") else "forward"
        setattr(prior, name, torch.compile(getattr(prior, name), options=options))
    return flow, prior


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="linf-lp", choices=CASES)
    ap.add_argument("--lr", type=int, default=64)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    header(f"torch.compile: {a.case}, LR {a.lr}x{a.lr} x4, {a.precision}, {a.device}")
    dev = torch.device(a.device)
    torch.manual_seed(0)
    flow, prior = build(flowsr_lp, a.case)
    flow, prior = flow.to(dev), prior.to(dev) if prior is not None else None
    lr = torch.rand(1, 3, a.lr, a.lr, device=dev)
    kw = {} if prior is not None else {"tau": 0.8}

    def call(resolver):
        return lambda: resolver.upscale(lr, scale=4, generator=torch.Generator(dev).manual_seed(0), **kw)

    eager = call(flowsr_lp.SuperResolver(flow, prior, precision=a.precision))
    compiled = call(flowsr_lp.SuperResolver(*compiled_copy(flow, prior), precision=a.precision))
    t0 = time.perf_counter()
    out = compiled()
    sync(dev)
    first = time.perf_counter() - t0
    diff = (out - eager()).abs().max().item()
    times = alternate({"eager": eager, "compiled": compiled}, a.repeats, dev)
    e, c = median(times["eager"]["wall"]), median(times["compiled"]["wall"])
    print(f"first compiled call (compiling) {first:.1f} s; max |compiled - eager| = {diff:.2e}")
    print(f"median of {a.repeats} alternated rounds ({load()} at the end), seconds per image:")
    print(f"  eager    wall {e:.4f} s")
    print(f"  compiled wall {c:.4f} s   eager / compiled {paired_ratio(times['compiled']['wall'], times['eager']['wall']):.2f}x")
    saved = e - c
    print(f"  the compile time is won back after {first / saved:.0f} images of this size" if saved > 0
          else "  compiled is not faster: the compile time is never won back")


if __name__ == "__main__":
    main()
