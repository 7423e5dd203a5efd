"""`flowsr-lp evaluate` of Set14 x4 (tau 0, tau 0.8 with --runs 2 and the learned prior; the
bundled linf-small + linf-small-lp; --no-lpips), each run a fresh job, two ways alternated
so that the machine's load hits both alike:

- threads: 1 process x 2 threads (--threads 2);
- processes: 2 processes x 1 thread (torchrun --standalone --nproc_per_node 2 --threads 1),
  the (image, method, run) units shared out over the processes.

Prints each run's wall time (process start to exit, model loading included) and CPU time
(every process of the run, user + system), the medians and their ratio, the load average
before and after, and whether the two ways wrote the same results.csv (2 threads and 1
thread may round differently in the last bit).

    python benchmarks/bench_evaluate_processes.py [--rounds 3] [--data ../shared/data/Set14]"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import header, load

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--flow", "linf-small", "--prior", "linf-small-lp", "--scale", "4", "--tau", "0", "0.8", "--runs", "2",
        "--no-lpips", "--device", "cpu", "-q"]


def run(way: str, data: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every process of the run)"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if way == "threads":
        cmd = [sys.executable, "-m", "flowsr_lp", "evaluate", "--threads", "2"]
    else:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "flowsr_lp", "evaluate", "--threads", "1"]
    t, c = time.perf_counter(), _children_cpu()
    subprocess.run(cmd + ARGS + ["--data", str(data), "-o", str(out)], env=env, capture_output=True, text=True,
                   check=True)
    return time.perf_counter() - t, _children_cpu() - c


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "Set14")
    a = ap.parse_args()
    header("evaluate Set14 x4: 1 process x 2 threads against 2 processes x 1 thread")
    print("before:", load())
    times: dict[str, list[float]] = {"threads": [], "processes": []}
    cpu: dict[str, list[float]] = {"threads": [], "processes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(a.rounds):
            for way in times:
                wall, used = run(way, a.data, Path(tmp) / way)
                times[way].append(wall)
                cpu[way].append(used)
                print(f"round {k} {way:9s} {wall:6.1f} s wall, {used:6.1f} s CPU  ({load()})", flush=True)
        same = (Path(tmp) / "threads" / "results.csv").read_bytes() == \
            (Path(tmp) / "processes" / "results.csv").read_bytes()
    med = {w: statistics.median(t) for w, t in times.items()}
    print("after:", load())
    print(f"median: 1 x 2 threads {med['threads']:.1f} s, 2 x 1 thread {med['processes']:.1f} s; "
          f"2 processes are {med['threads'] / med['processes']:.2f}x the speed of 2 threads")
    print(f"median CPU seconds: {statistics.median(cpu['threads']):.1f} (threads), "
          f"{statistics.median(cpu['processes']):.1f} (processes)")
    print("results.csv the same bytes both ways:", same)


if __name__ == "__main__":
    main()
