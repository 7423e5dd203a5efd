"""A job's units over torchrun processes: contiguous shares balanced by cost, a journal of
finished units that a resumed run reads back, and one progress bar for the whole job."""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .errors import UsageError
from .images import atomic_write

log = logging.getLogger(__name__)


def shares(costs: list[float], world: int) -> list[list[int]]:
    """Unit indices per rank: contiguous runs of units whose summed costs are as even as the
    order allows (a unit goes to the share its cost's midpoint falls in)."""
    total = sum(costs)
    if total <= 0:
        costs, total = [1.0] * len(costs), float(len(costs))
    out: list[list[int]] = [[] for _ in range(world)]
    acc = 0.0
    for i, c in enumerate(costs):
        out[min(world - 1, int(world * (acc + c / 2) / total))].append(i)
        acc += c
    return out


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


class Journal:
    """Finished units, one JSON line each in `folder`/rank-R.jsonl, written, flushed and
    fsynced before the next unit starts, with the settings they were computed with in
    `folder`/settings.json. `resume=True` reads back what earlier runs recorded (`records`)
    and refuses settings that differ, naming the first; otherwise the folder starts empty.
    A line cut short by a kill is skipped. `folder=None` keeps everything in memory (the
    Python API). Samples that later records need (`put_sample`) are kept in
    `folder`/samples until `drop_samples`."""

    def __init__(self, folder: Path | None, settings: dict, *, resume: bool = False, rank: int = 0, world: int = 1):
        self.folder, self.records, self._memory, self._file = folder, [], {}, None
        if folder is None:
            return
        folder = self.folder = Path(folder)
        settings = json.loads(json.dumps(settings))
        if resume:
            self._check(settings)
            self.records = self._read()
        elif rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
        barrier(world)
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        if rank == 0:
            atomic_write(folder / "settings.json", lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1)))
        path = folder / f"rank-{rank}.jsonl"
        self._file = open(path, "a" if resume else "w", encoding="utf-8")
        if resume and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # after a line cut short: start a new one

    def _check(self, settings: dict) -> None:
        path = self.folder / "settings.json"
        if not path.is_file():
            log.info("%s: nothing to resume; starting from the beginning", self.folder)
            return
        old = json.loads(path.read_text())
        for key in dict.fromkeys([*settings, *old]):
            if old.get(key) != settings.get(key):
                raise UsageError(f"--resume: {key} differs from the run recorded in {self.folder.parent} "
                                 f"({old.get(key)!r} there, {settings.get(key)!r} now); resume with the same options, "
                                 "or leave out --resume to start again")

    def _read(self) -> list[dict]:
        out = []
        for path in sorted(self.folder.glob("rank-*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    log.info("%s: skipped a line cut short by the interruption", path)
        return out

    def record(self, rec: dict) -> None:
        self.records.append(rec)
        if self._file is not None:
            self._file.write(json.dumps(rec) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def _sample_path(self, name: str) -> Path:
        return self.folder / "samples" / f"{name}.pt"

    def put_sample(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().cpu()
        if self.folder is None:
            self._memory[name] = tensor
        else:
            atomic_write(self._sample_path(name), lambda tmp: torch.save(tensor, tmp))

    def get_sample(self, name: str) -> torch.Tensor | None:
        if name in self._memory:
            return self._memory[name]
        if self.folder is not None and self._sample_path(name).is_file():
            return torch.load(self._sample_path(name), weights_only=True)
        return None

    def drop_samples(self, names) -> None:
        for name in names:
            self._memory.pop(name, None)
            if self.folder is not None:
                self._sample_path(name).unlink(missing_ok=True)


class JobProgress:
    """One bar for the whole job on rank 0: units done of `total` (with the rate and an ETA).
    Under torchrun every rank adds its finished units to a counter in the process group's
    store, which rank 0 reads once a second; the other ranks show nothing."""

    KEY = "flowsr_lp/units_done"

    def __init__(self, total: int, done: int = 0, *, rank: int = 0, world: int = 1, desc: str = "",
                 unit: str = "unit", enabled: bool = True):
        self.done = done
        self.store = dist.distributed_c10d._get_default_store() if world > 1 else None
        self.bar = tqdm(total=total, initial=done, desc=desc, unit=unit, disable=not enabled or rank != 0)
        self._stop, self._thread = threading.Event(), None
        if self.store is not None and not self.bar.disable:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def step(self, n: int = 1, note: str | None = None) -> None:
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        if self.store is None:
            self.bar.update(n)
        else:
            self.store.add(self.KEY, n)

    def update(self, n: int = 1) -> None:  # tqdm's spelling
        self.step(n)

    def set_postfix_str(self, note: str) -> None:
        self.bar.set_postfix_str(note, refresh=False)

    def _sync(self) -> None:
        self.bar.update(self.done + self.store.add(self.KEY, 0) - self.bar.n)

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            self._sync()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sync()
        self.bar.close()
