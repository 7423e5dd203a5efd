"""Back-to-back `flowsr-lp upscale` runs (bundled LINF + its prior, x4 of a 128x128 crop of
scikit-image's astronaut), each a fresh process as a user runs them, in three thread modes,
alternated so that the machine's load hits each alike:

- default: the package's choice (the CPUs idle over 0.25 s of /proc/stat at the start);
- load-average: what the earlier rule chose, round(CPUs - 1-minute load average), read just
  before the run (passed as --threads);
- all: --threads with every available CPU.

Prints each run's thread count (from the run's log) and wall time, the medians, and the
default / load-average speed-up. On a quiet machine the default should pick every CPU, right
after a previous run too; under real load it should pick what is left. OMP_NUM_THREADS is
removed from the runs' environment (the package would obey it).

    python benchmarks/bench_threads.py [--rounds 3]"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import header, load
from flowsr_lp.runtime import available_cpus


def run(img: Path, out: Path, threads: int | None) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "flowsr_lp", "-q", "upscale", str(img), "--scale", "4", "--seed", "0",
           "--device", "cpu", "-o", str(out)] + (["--threads", str(threads)] if threads else [])
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    return int(re.search(r"CPU: (\d+) thread", done.stderr)[1]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    header("back-to-back upscale runs: thread choice and wall time")
    n = available_cpus()
    from skimage import data

    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "lr.png"
        Image.fromarray(np.ascontiguousarray(data.astronaut()[100:228, 160:288])).save(img)
        modes = {"default": lambda: None, "load-average": lambda: max(1, min(n, round(n - os.getloadavg()[0]))),
                 "all": lambda: n}
        got = {m: [] for m in modes}
        for r in range(a.rounds):
            for name, threads in modes.items():
                before = load()
                t, wall = run(img, Path(tmp) / f"{name}{r}.png", threads())
                got[name].append((t, wall))
                print(f"round {r} {name:<13} {t} thread(s) {wall:6.2f} s  ({before} before)")
    for name, runs in got.items():
        print(f"{name:<13} threads {[t for t, _ in runs]}, wall median {statistics.median(w for _, w in runs):.2f} s")
    ratio = statistics.median(b[1] / d[1] for d, b in zip(got["default"], got["load-average"]))
    print(f"speed-up of the default over the load-average rule (median of paired rounds): {ratio:.2f}x ({load()})")


if __name__ == "__main__":
    main()
