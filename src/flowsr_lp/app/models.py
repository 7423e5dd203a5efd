"""The models the app offers, and the cache that loads each one once and shares it.

Every loaded model has its own queue: at most `concurrency` requests run on it at a time and
the others wait in line for that model only, so a slow model never holds up a fast one."""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints import load_flow, load_prior
from ..errors import ModelNotFoundError, UsageError
from ..hub import registry
from ..pipeline import LearnedPrior, SuperResolver
from ..precision import parse_precision, precision_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    """A flow and its latent module (None when it has none), as the page lists them: each a
    registry name or a path (`load_flow` / `load_prior` resolve both)."""
    name: str
    flow: str
    prior: str | None = None


def registry_choices() -> list[ModelChoice]:
    """Every flow the model registry names, with the latent module trained for it; the
    bundled ones (which need no download) first."""
    entries = list(registry.models().values())
    priors = {e.flow: e.name for e in entries if e.kind == "prior"}
    flows = sorted((e for e in entries if e.kind == "flow"), key=lambda e: not e.bundled)
    return [ModelChoice(e.name, e.name, priors.get(e.name)) for e in flows]


def local_choice(flow: str, prior: str | None = None) -> ModelChoice:
    """A checkpoint on this machine's disk (and optionally its latent module)."""
    paths = [Path(p).expanduser() for p in (flow, prior) if p]
    for p in paths:
        if not p.is_file():
            raise ModelNotFoundError(f"{p}: no such checkpoint file")
    flow_path = str(paths[0].resolve())
    prior_path = str(paths[1].resolve()) if len(paths) > 1 else None
    return ModelChoice(f"local: {Path(flow_path).name}", flow_path, prior_path)


class LoadedModel:
    """A flow ready to run: one pipeline (`resolver`) and the learned-prior strategy (`prior`,
    None without a latent module). `call()` runs work in this model's own queue: on its
    `concurrency` worker threads, so at most that many requests compute at once and the
    tensors of every request come from the same few threads' memory."""

    def __init__(self, choice: ModelChoice, flow, prior, concurrency: int, precision: str = "fp32"):
        self.choice = choice
        self.flow = flow
        self.resolver = SuperResolver(flow, precision=precision)
        self.prior = LearnedPrior(prior) if prior is not None else None
        if self.prior is not None:
            self.prior.check(flow)
        self.concurrency = concurrency
        self._workers = ThreadPoolExecutor(concurrency, thread_name_prefix=f"model-{choice.name}")
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self.peak_running = 0
        self.closed = False  # dropped from the cache: the workers stop once idle

    @property
    def fixed_scale(self) -> int | None:
        return getattr(self.flow, "fixed_scale", None)

    @property
    def device(self) -> torch.device:
        return self.resolver.device

    @property
    def precision(self) -> str:
        """What the encoder, conditioning and latent module compute in ("fp32", "bf16", ...;
        the flow's invertible transform is always float32)."""
        return precision_name(self.resolver.dtype)

    def call(self, fn, *args, on_wait=None):
        """fn(*args) in this model's queue; `on_wait(n)` is told first when n requests must
        finish before this one starts. Returns fn's result (or raises its exception)."""
        with self._lock:
            ahead = self.running + self.waiting - self.concurrency + 1
            self.waiting += 1
            if self._workers is None:  # dropped and idle, yet a request still holds this model
                self._workers = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"model-{self.choice.name}")
            future = self._workers.submit(self._work, fn, args)
        if ahead > 0 and on_wait is not None:
            on_wait(ahead)
        return future.result()

    def _work(self, fn, args):
        with self._lock:
            self.waiting -= 1
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
        try:
            return fn(*args)
        finally:
            with self._lock:
                self.running -= 1
                self._stop_if_idle()

    def close(self) -> None:
        """Dropped from the cache: the worker threads end once no request runs or waits; a
        request that already holds this model still runs."""
        with self._lock:
            self.closed = True
            self._stop_if_idle()

    def _stop_if_idle(self) -> None:  # with self._lock held
        if self.closed and self._workers is not None and self.running + self.waiting == 0:
            self._workers.shutdown(wait=False)
            self._workers = None


class ModelCache:
    """Loads each (flow, prior, device, precision) once, thread-safe: concurrent first requests for a
    model wait for one load; requests for other models do not wait for it. At most
    `max_models` stay loaded (least recently used dropped; a request still running on a
    dropped model keeps it alive until it ends)."""

    def __init__(self, device: str | torch.device = "cpu", concurrency: int = 1, max_models: int = 4,
                 precision: str = "fp32"):
        if concurrency < 1 or max_models < 1:
            raise UsageError("concurrency and max_models must be >= 1")
        self.device = torch.device(device)
        self.precision = parse_precision(precision)
        self.concurrency = concurrency
        self.max_models = max_models
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._loading: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def key(self, choice: ModelChoice) -> tuple:
        return (choice.flow, choice.prior, str(self.device), self.precision)

    def get(self, choice: ModelChoice) -> LoadedModel:
        key = self.key(choice)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            model = self._load(choice)
            with self._lock:
                self._models[key] = model
                self._loading.pop(key, None)
                while len(self._models) > self.max_models:
                    dropped, old = self._models.popitem(last=False)
                    old.close()
                    log.info("model cache: dropped %s", dropped[0])
            return model

    def _load(self, choice: ModelChoice) -> LoadedModel:
        t0 = time.perf_counter()
        flow = load_flow(choice.flow, device=self.device)
        prior = load_prior(choice.prior, device=self.device) if choice.prior else None
        self.loads += 1
        log.info("loaded %s in %.2f s", choice.name, time.perf_counter() - t0)
        return LoadedModel(choice, flow, prior, self.concurrency, self.precision)
