"""benchmarks/gpu_check.py as CI's dry run: every check runs on the CPU at small sizes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REFERENCE

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert proc.returncode == 0, {k: v for k, v in checks.items() if v["status"] not in ("pass", "skip")}
    assert list(checks) == ["parity", "reference", "seeds", "tiling", "oom", "evaluate", "training", "app", "speed"]
    assert checks["reference"]["status"] == ("pass" if REFERENCE.is_dir() else "skip")
    assert all(c["status"] == "pass" for k, c in checks.items() if k != "reference")
    parity = {k: v for k, v in checks["parity"].items() if k not in ("status", "seconds")}
    assert len(parity) == 12 and all(v["finite"] for v in parity.values())
    assert parity["linf-small-lp fp32"]["max"] == 0  # CPU against CPU
    assert checks["oom"]["retried_in_tiles"] and checks["oom"]["simulated"]
    assert all(checks["training"][c]["bitwise equal"] for c in ("train-prior", "train-flow"))
    assert checks["app"]["loads"] == 1
    speed = {k: v for k, v in checks["speed"].items() if k not in ("status", "seconds")}
    assert len(speed) == 6 and all(v["images_per_s"] > 0 for v in speed.values())
    assert report["hardware"].startswith("CPU ")
