"""A code change measured on its own: the same full-size random-weight model built from an
earlier copy of the package and from the current one, calls alternated in one process,
fp32 unless told otherwise, outputs compared.

    python benchmarks/bench_before_after.py --before REV_OR_DIR [--case linf-patch] [--lr 64] [--repeats 7]
                                            [--precision fp32]

REV_OR_DIR is a git revision (its src/flowsr_lp is extracted) or a folder holding a copy
of the package source. The copy is imported under the name `flowsr_lp_before` (the
package uses relative imports only), so both versions live side by side.
Cases: linf-patch (EDSR-baseline 3x3 LINF, tau 0.8), linf-rrdb (RRDB 3x3 LINF),
linf-lp (linf-patch + UNet dim 64 latent module), srflow (4x, nb 23, K 16)."""
from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import flowsr_lp
from common import CASES, alternate, build, header, load, report

ROOT = Path(__file__).resolve().parents[1]


def import_before(spec: str, tmp: Path):
    dest = tmp / "flowsr_lp_before"
    src = Path(spec)
    if src.is_dir():  # the package folder itself, or a checkout holding src/flowsr_lp
        shutil.copytree(src if (src / "__init__.py").exists() else src / "src" / "flowsr_lp", dest)
    else:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", spec, "src/flowsr_lp"], check=True,
                             capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=tar, check=True)
        (tmp / "src" / "flowsr_lp").rename(dest)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("flowsr_lp_before")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--case", default="linf-patch", choices=CASES)
    ap.add_argument("--lr", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 (both sides)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    header(f"before/after: {a.case}, LR {a.lr}x{a.lr} x4, {a.precision}, before = {a.before}")
    with tempfile.TemporaryDirectory() as tmp:
        before = import_before(a.before, Path(tmp))
        torch.manual_seed(0)
        flow, prior = build(flowsr_lp, a.case)
        old_flow, old_prior = build(before, a.case)
        old_flow.load_state_dict(flow.state_dict())
        if prior is not None:
            old_prior.load_state_dict(prior.state_dict())
        new = flowsr_lp.SuperResolver(flow, prior, precision=a.precision)
        # a copy from before the precision option knows fp32 only
        old = before.SuperResolver(old_flow, old_prior, **({} if a.precision == "fp32" else {"precision": a.precision}))
        lr = torch.rand(1, 3, a.lr, a.lr)
        kw = {"scale": 4} if prior is not None else {"scale": 4, "tau": 0.8}

        def call(resolver):
            return lambda: resolver.upscale(lr, generator=torch.Generator().manual_seed(0), **kw)

        diff = (call(new)() - call(old)()).abs().max().item()
        print(f"max |after - before| = {diff:.2e}")
        times = alternate({"before": call(old), "after": call(new)}, a.repeats)
    print(f"median of {a.repeats} alternated rounds, {load()} at the end:")
    report(times, "before")


if __name__ == "__main__":
    main()
