"""The app on 127.0.0.1 for tests: in this process (a background thread) or as a
`flowsr-lp app` subprocess, on a port the OS says is free."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(path: Path, size: int = 64, seed: int = 0) -> Path:
    """A small photo-like test image: a crop of scikit-image's astronaut."""
    from skimage import data

    img = data.astronaut()[140 + seed:140 + seed + size, 180:180 + size]
    Image.fromarray(np.ascontiguousarray(img)).save(path)
    return path


@contextmanager
def app_in_thread(**config):
    """(App, local URL) of the app served from this process until the block ends."""
    from flowsr_lp.app.ui import AppConfig, launch

    app, demo, url = launch(AppConfig(**config), port=free_port(), block=False, quiet=True)
    try:
        yield app, url
    finally:
        demo.close()
        app.close()


@contextmanager
def app_process(*args: str, timeout: float = 120.0):
    """(Popen, URL) of `python -m flowsr_lp app` started with `args`, ready to serve."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "flowsr_lp", "-q", "app", "--port", str(port), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(url + "config", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the app did not answer on {url} within {timeout:.0f} s") from None
                time.sleep(0.25)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
