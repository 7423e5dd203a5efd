"""Memory figures that depend on the machine (its kernel, glibc, other processes), measured
here rather than asserted in the tests:

- allocator: minor page faults over 20 cycles of a freed and reallocated 16 MB tensor, in a
  child process with and without `runtime.keep_freed_memory` (glibc told to map every block
  over 128 KB afresh, as M_TOP_PAD alone left it). Expected: with the setting, well under a
  third of the faults without it (typically none).
- app: peak RSS of a `flowsr-lp app --concurrency 1` process for one /upscale call (x4 of a
  128x128 photo) and for four clients at once. Expected: four clients within 1.5x of one call
  (computing in the callers' threads instead of the model's own gave about 4x).
  Linux only (/proc/PID/clear_refs); needs the app extra.

    python benchmarks/bench_memory.py [--skip-app]"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import header, load

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CYCLES = """
import resource, sys, torch
from flowsr_lp.runtime import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else None
def cycle():
    torch.empty(4 << 20).fill_(1.0)   # 16 MB, touched
cycle(); cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple[str, int]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return out[0], int(out[1])


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def app_memory(tmp: Path) -> None:
    from gradio_client import Client, handle_file

    from app_server import app_process, photo

    path = photo(tmp / "lr.png", 128)  # x4: 512x512 outputs
    with app_process("--concurrency", "1") as (proc, url):
        clients = [Client(url, verbose=False) for _ in range(4)]

        def call(k):
            return clients[k].predict(handle_file(str(path)), 4, 0.8, k % 2 == 0, k, api_name="/upscale")

        def reset_peak():
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # peak RSS := current RSS

        call(0)  # model loaded, first-call allocations made
        call(1)
        base = status_kb(proc.pid, "VmRSS")
        reset_peak()
        call(0)
        single = status_kb(proc.pid, "VmHWM")
        reset_peak()
        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(call, range(4)))
        four = status_kb(proc.pid, "VmHWM")
        seconds = time.monotonic() - start
    print(f"app RSS: idle {base / 1024:.0f} MiB; peak one call {single / 1024:.0f} MiB; peak 4 clients "
          f"{four / 1024:.0f} MiB ({seconds:.1f} s); 4 clients / one call {four / single:.2f} (target <= 1.5); "
          f"added above idle: {(four - base) / max(single - base, 1):.2f}x one call's")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-app", action="store_true", help="only the allocator figure")
    a = ap.parse_args()
    header("memory: allocator page faults and the app's peak RSS")
    kept, with_setting = page_faults("kept")
    _, without = page_faults("plain")
    print(f"allocator: keep_freed_memory took: {kept}; minor page faults over 20 cycles of 16 MB: "
          f"{with_setting} with it, {without} without (ratio {with_setting / max(without, 1):.3f}, "
          f"target < 0.5) ({load()})")
    if not a.skip_app and Path("/proc/self/clear_refs").exists():
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            app_memory(Path(tmp))


if __name__ == "__main__":
    main()
