"""Shared fixtures. Data and reference vectors live in ../shared beside the checkout (or
wherever FLOWSR_LP_SHARED points); tests that need them skip with a message without them (and fail under CI=true)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from flowsr_lp.cli import configure_logging

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FLOWSR_LP_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"
if DATA.is_dir():  # named data sets (Set5, DIV2K ...) resolve there, also in subprocesses
    os.environ["FLOWSR_LP_DATA"] = os.pathsep.join(p for p in (os.environ.get("FLOWSR_LP_DATA"), str(DATA)) if p)


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def need(path: Path) -> Path:
    """`path`, or skip the test with a message; under CI (CI=true) fail instead, so that the
    reference tests can never silently disappear."""
    if not path.exists():
        msg = f"{path} is absent (set FLOWSR_LP_SHARED to the shared folder to run this test)"
        if under_ci():
            pytest.fail(f"{msg}; CI=true, so the shared reference files must be present", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture
def reference() -> Path:
    return need(REFERENCE)


@pytest.fixture
def data() -> Path:
    return need(DATA)


def load_vectors(name: str) -> dict:
    return torch.load(need(REFERENCE / f"{name}.vectors.pt"), weights_only=True)


def assert_ref(actual, expected, atol=1e-4, rtol=1e-4, msg=""):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{msg}: {m}")


@pytest.fixture
def no_grad():
    """Reference comparisons need no autograd graph."""
    with torch.no_grad():
        yield


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Seeded, and torch's thread count restored after each test: commands run in-process
    (upscale, demo, app) pick threads from the load, and float reductions, so bitwise
    comparisons with a subprocess, depend on the thread count."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _package_log_on_stderr():
    """The package's log as the command line shows it (info and up on stderr), for every test."""
    configure_logging()
    yield
