"""Quality gate for reduced precision: B100 x4 with the bundled models (LINF and SRFlow,
sampling at tau and with the learned prior), evaluated at fp32 and at bf16 with the same
seeds; prints PSNR and %Inf per method and precision and the differences.
Gate: |PSNR(bf16) - PSNR(fp32)| <= 0.05 dB and %Inf unchanged.

    python benchmarks/bench_quality_bf16.py [--data B100] [--max-images 100] [--runs 3] [--threads 1]"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from common import header, load
from flowsr_lp import load_flow, load_prior
from flowsr_lp.evaluate import EvalOptions, evaluate, summarise
from flowsr_lp.hub.resolve import bundled_path

SHARED = Path(os.environ.get("FLOWSR_LP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SETUPS = [("LINF", "linf-small", "linf-small-lp", 0.8), ("SRFlow", "srflow-small", "srflow-small-lp", 0.9)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "data" / "B100"), help="a data set name or folder")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--runs", type=int, default=3, help="seeded draws per image at tau")
    ap.add_argument("--precision", default="bf16", help="the reduced precision to check against fp32")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--flows", default="LINF,SRFlow", help="which bundled setups: LINF, SRFlow or both")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    header(f"{a.data} x4, bundled models, fp32 vs {a.precision}, {a.max_images or 'all'} images, {a.runs} runs at tau")
    worst = 0.0
    inf_same = True
    for label, flow_name, prior_name, tau in (s for s in SETUPS if s[0] in a.flows.split(",")):
        flow, prior = load_flow(bundled_path(flow_name)), load_prior(bundled_path(prior_name))
        res = {}
        for p in ("fp32", a.precision):
            opts = EvalOptions(data=[a.data], scales=[4.0], taus=[tau], runs=a.runs, use_lpips=False,
                               max_images=a.max_images, lr_source="make", report_images=0, label=label, precision=p)
            with tempfile.TemporaryDirectory() as tmp:
                rows, _, _ = evaluate(flow, prior, opts, Path(tmp), progress=False)
            res[p] = {e["method"]: e for e in summarise(rows)}
        for method, e32 in res["fp32"].items():
            e16 = res[a.precision][method]
            d = e16["psnr"] - e32["psnr"]
            worst = max(worst, abs(d))
            inf_same &= e16["inf_rate"] == e32["inf_rate"]
            print(f"  {method:<16} PSNR fp32 {e32['psnr']:.3f} dB, {a.precision} {e16['psnr']:.3f} dB (diff {d:+.4f});"
                  f" %Inf {e32['inf_rate']:.2f} / {e16['inf_rate']:.2f}; images {e32['images']}")
    print(f"largest |PSNR difference| {worst:.4f} dB (gate 0.05), %Inf unchanged: {inf_same}; {load()} at the end")


if __name__ == "__main__":
    main()
