"""The training loop shared by `train-flow` and `train-prior`: reproducible batches, Adam with
a multi-step schedule, progress bar, CSV + TensorBoard logs, periodic validation, atomic
checkpoints with optimizer / scheduler / RNG state, exact resumption, and
DistributedDataParallel under torchrun."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.batches import EpochBatches
from ..data.crops import make_crops, min_image_side
from ..data.folders import ImageFolder
from ..images import atomic_write
from ..runtime import progress_bars
from .validate import Validator
from .weight_average import WeightAverage

CHECKPOINT = "checkpoint.pt"
STATE_KEYS = ("step", "model", "optimizer", "scheduler", "rng")
LOGS = ("log.csv", "val.csv")


from ..errors import TrainingError, first_line  # noqa: F401  (TrainingError re-exported)

logger = logging.getLogger(__name__)


def state_digest(state, h=None) -> str:
    """SHA-256 over everything in a training state (tensor bytes, shapes and dtypes, plain
    values), so a checkpoint damaged after it was written is noticed on resume."""
    h = h or hashlib.sha256()
    if isinstance(state, dict):
        for k, v in state.items():
            if k != "checksum":
                h.update(repr(k).encode())
                state_digest(v, h)
    elif isinstance(state, (list, tuple)):
        h.update(f"{type(state).__name__}{len(state)}".encode())
        for v in state:
            state_digest(v, h)
    elif torch.is_tensor(state):
        t = state.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # hashed in place, no copy
    else:
        h.update(f"{type(state).__name__}:{state!r}".encode())
    return h.hexdigest()


def grads_finite(params) -> bool:
    """Whether every gradient is finite, read back from the device once (not once per
    parameter: each read waits for the GPU)."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


def restore_cuda_rng(states: list, visible: int, set_state=None) -> None:
    """Restore the saved CUDA generators of the GPUs this run sees; a checkpoint from a run
    that saw another number of GPUs restores those both have, with a warning (CUDA random
    draws then differ from an uninterrupted run; the seeded data and noise are drawn on the
    CPU and are unaffected)."""
    set_state = set_state or torch.cuda.set_rng_state
    if len(states) != visible:
        logger.warning("the checkpoint holds the CUDA random state of %d GPU(s), this run sees %d: restoring %d; "
                       "CUDA random draws will not repeat the interrupted run's exactly",
                       len(states), visible, min(len(states), visible))
    for i, state in enumerate(states[:visible]):
        set_state(state, i)


def check_out_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """A fresh run never silently replaces an earlier run's checkpoint."""
    if not resume and not overwrite and (out / CHECKPOINT).exists():
        raise TrainingError(f"{out / CHECKPOINT} holds an earlier run's checkpoint: pass --resume to continue "
                            "it or --overwrite to start again over it")
    if resume and not (out / CHECKPOINT).is_file():
        raise TrainingError(f"--resume: no checkpoint at {out / CHECKPOINT}")
    if resume:  # logs the resumed run will continue must be readable, before any work
        for name in LOGS:
            if (out / name).exists():
                read_log(out / name)


def read_log(path: Path) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a log.csv / val.csv; a torn last row (a kill mid-append leaves no
    final newline, or too few fields) is dropped; anything else unreadable is a TrainingError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise TrainingError(f"{path}: not a training log ({type(e).__name__}); move it away to resume") from None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # torn by a kill mid-append
    reader = csv.DictReader(lines)
    fields = list(reader.fieldnames or [])
    rows = list(reader)
    if rows and (None in rows[-1] or None in rows[-1].values()):
        rows.pop()  # too few or too many fields: torn
    if lines and "step" not in fields:
        raise TrainingError(f"{path}: not a training log (no step column); move it away to resume")
    for i, r in enumerate(rows):
        if None in r or None in r.values() or not r["step"].isdigit():
            raise TrainingError(f"{path}: row {i + 2} is not a log row ({','.join(map(str, r.values()))[:60]!r}); "
                                "move the file away to resume")
    return fields, rows


def total_iterations(optim: dict, per_epoch: int) -> int:
    return int(optim["iterations"]) if optim["iterations"] is not None else int(optim["epochs"]) * per_epoch


def milestones_in_iterations(optim: dict, per_epoch: int, total: int) -> list[int]:
    unit = optim["milestone_unit"]
    scale = {"epoch": per_epoch, "iteration": 1, "fraction": total}[unit]
    return sorted({round(m * scale) for m in optim["milestones"]})


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)


def validate_once(out: Path, cfg: dict, device, resolver) -> None:
    """A stage without steps validates once, at step 0, into val.csv (when the recipe names
    validation images)."""
    if cfg["data"]["val"]["folders"]:
        vals = Validator(cfg, device)(resolver)
        _write_csv(out / "val.csv", ["step", "epoch", *vals], [{"step": 0, "epoch": "0.000",
                                                                 **{k: f"{v:.6g}" for k, v in vals.items()}}])


def write_run_config(out: Path, cfg: dict, label: str) -> None:
    """A run folder's config.yaml: the recipe as run, with the loss it used."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({**cfg, "perceptual_used": label}, sort_keys=False))


def export_run(out: Path, export, model, cfg: dict, label: str, steps: int, seconds: float, skipped: int) -> Path:
    """The end of a run: `export(model, out/model.safetensors, training=record)` and summary.json."""
    path = export(model, out / "model.safetensors",
                  training={"perceptual": label, "steps": steps, "seconds": round(seconds, 1),
                            "skipped_steps": skipped, "recipe": cfg.get("name", "")})
    (out / "summary.json").write_text(json.dumps(
        {"steps": steps, "seconds": seconds, "perceptual": label, "model": str(path), "skipped_steps": skipped},
        indent=1))
    return path


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    """`objective(batch) -> (loss, logs)` trained on the parameters of `model` (the module
    saved in checkpoints and exported at the end with `export(model, path)`)."""

    def __init__(self, cfg: dict, model: nn.Module, objective: nn.Module, export, resolver, *, label: str,
                 rank: int = 0, world: int = 1, device: torch.device = torch.device("cpu"), resume: bool = False):
        self.cfg, self.model, self.export, self.label, self.resolver = cfg, model, export, label, resolver
        self.rank, self.world, self.device = rank, world, device
        self.out = Path(cfg["run"]["out"])  # checked by `check_out_folder` (train.run) before any work
        run, optim = cfg["run"], cfg["optim"]
        crops = make_crops(cfg["data"]["crop"])
        train = cfg["data"]["train"]
        images = ImageFolder(train["folders"], repeat=train["repeat"], cache=train["cache"], min_side=min_image_side(crops))
        self.batches = EpochBatches(images, crops, optim["batch_size"], run["seed"], rank, world)
        self.per_epoch = len(self.batches)
        self.total = total_iterations(optim, self.per_epoch)
        self.objective = objective.to(device)
        # a module whose parameters vary by scale (LINF-LP's specialists) reaches other parameters
        # at other scales: no probe can tell which are never used, and DDP must expect some unused
        by_scale = any(getattr(m, "parameters_vary_by_scale", False) for m in model.modules())
        self.frozen = [] if by_scale else self._freeze_unused(_to(self.batches[0], device))
        if world > 1:
            if device.type == "cuda" and run["sync_bn"]:
                self.objective = nn.SyncBatchNorm.convert_sync_batchnorm(self.objective)
            self.objective = nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=by_scale)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=optim["lr"], betas=tuple(optim["betas"]))
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones_in_iterations(optim, self.per_epoch, self.total), gamma=optim["gamma"])
        # fp16 autocast needs loss scaling against underflowing gradients; bf16 has float32's range
        self.scaler = torch.amp.GradScaler(device.type) if run["amp"] == "fp16" else None
        self.ema = WeightAverage(model, optim["ema"]) if optim["ema"] is not None else None
        self.step, self.elapsed, self.skipped = 0, 0.0, 0
        if resume:
            self._load(self.out / CHECKPOINT)
        self.validator = Validator(cfg, device) if rank == 0 and cfg["data"]["val"]["folders"] and run["val_every"] else None
        self.writer = None

    def _freeze_unused(self, batch: dict) -> list[str]:
        """Freeze the parameters the objective never reaches (SRFlow's and RRDB-LINF's RRDB
        keeps layers only for strict loading: HRconv, conv_last, upconv2, flowUpsamplerNet.f),
        so DistributedDataParallel does not wait for their gradients and Adam does not carry
        them. Found with one probe forward per kind of step (LINF fine-tuning alternates two);
        buffers and RNG are restored so the run is unchanged. Every process freezes the same."""
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not params:
            return []
        buffers = [(b, b.detach().clone()) for b in self.objective.buffers()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        used = torch.zeros(len(params), device=self.device)
        # one probe reaches every parameter a step can; an alternating objective needs both kinds
        for step in ((0, 1) if getattr(self.objective, "alternates", False) else (0,)):
            loss, _ = self.objective({**batch, "step": step})
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            used += torch.tensor([g is not None for g in grads], dtype=used.dtype, device=self.device)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        if self.world > 1:
            dist.all_reduce(used)
        unused = [n for n, u in zip(params, used.tolist()) if u == 0]
        for n in unused:
            params[n].requires_grad_(False)
        if unused and self.rank == 0:
            layers = dict.fromkeys(n.rsplit(".", 1)[0] for n in unused)
            logger.info("%d parameter tensors take no part in the loss and stay frozen: %s", len(unused), ", ".join(layers))
        return unused

    # ---- checkpoints ------------------------------------------------------------------
    def _state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {"version": 1, "step": self.step, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng,
                 "config": self.cfg, "perceptual": self.label, "elapsed": self.elapsed, "skipped": self.skipped}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        state["checksum"] = state_digest(state)
        return state

    def save(self) -> None:
        if self.rank == 0:
            state = self._state()
            atomic_write(self.out / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise TrainingError(f"--resume: no checkpoint at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            first = first_line(e)[:120]
            raise TrainingError(f"{path}: unreadable training checkpoint ({first})") from None
        if not isinstance(state, dict) or not all(k in state for k in STATE_KEYS):
            have = sorted(map(str, state))[:6] if isinstance(state, dict) else type(state).__name__
            raise TrainingError(f"{path}: not a flowsr-lp training checkpoint (expected {', '.join(STATE_KEYS)}; "
                                f"found {have})")
        if "checksum" in state and state["checksum"] != state_digest(state):
            raise TrainingError(f"{path}: checksum mismatch, the file was damaged after it was written; "
                                "resume from a copy or start again with --overwrite")
        if "checksum" not in state:
            logger.warning("%s has no checksum (written by an older version): not verified", path)
        step = state["step"]
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= self.total:
            raise TrainingError(f"{path}: step {step!r} is not an iteration count between 0 and {self.total}")
        if state.get("perceptual") != self.label:
            raise TrainingError(f"{path} was trained with perceptual loss {state.get('perceptual')!r}, "
                                f"this run uses {self.label!r}: resume with the same loss")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            if "cuda" in state["rng"] and torch.cuda.is_available():
                restore_cuda_rng(state["rng"]["cuda"], torch.cuda.device_count())
            if self.scaler is not None and "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
            if (self.ema is None) != ("ema" not in state):
                raise ValueError("this run and the checkpoint differ in keeping a weight average: "
                                 "resume with the same optim.ema")
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            first = first_line(e)[:160]
            raise TrainingError(f"{path}: does not fit this run's model and optimizer ({first})") from None
        self.step, self.elapsed, self.skipped = step, float(state.get("elapsed", 0.0)), int(state.get("skipped", 0))

    # ---- logs -------------------------------------------------------------------------
    def _open_logs(self) -> None:
        write_run_config(self.out, self.cfg, self.label)
        self._fields: dict[str, list[str]] = {}
        for name in LOGS:  # resuming: forget rows logged after the checkpoint
            path = self.out / name
            if not path.exists():
                continue
            fields, rows = read_log(path)
            rows = [r for r in rows if int(r["step"]) <= self.step]
            path.unlink()
            if rows:
                self._fields[name] = fields
                _write_csv(path, fields, rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step or None)
            self.writer.add_text("perceptual loss", self.label, self.step)
        except ImportError:
            logger.warning("tensorboard is not installed; logging to CSV only "
                           "(pip install 'flowsr-lp[train]' for TensorBoard)")

    def log(self, values: dict, name: str = "log.csv") -> None:
        """Append a row to log.csv (training) or val.csv (validation), and to TensorBoard."""
        row = {"step": self.step, "epoch": f"{self.step / self.per_epoch:.3f}",
               **{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in values.items()}}
        path = self.out / name
        fields = self._fields.get(name, [])
        if not set(row) <= set(fields):  # a new column (e.g. the other step of LINF fine-tuning)
            old = []
            if path.exists():
                with open(path, newline="") as f:
                    old = list(csv.DictReader(f))
            self._fields[name] = fields = fields + [k for k in row if k not in fields]
            _write_csv(path, fields, old)
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fields).writerow(row)
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, self.step)

    # ---- the loop ---------------------------------------------------------------------
    def _gather(self, logs: dict) -> dict:
        """Mean of each logged value over the processes."""
        vals = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in logs.values()])
        if self.world > 1:
            dist.all_reduce(vals)
            vals /= self.world
        return dict(zip(logs.keys(), vals.tolist()))

    def run(self) -> Path | None:
        run = self.cfg["run"]
        if self.rank == 0:
            self._open_logs()
        bar = tqdm(total=self.total, initial=self.step, desc=f"train-{self.cfg['task']} [{self.label}]",
                   disable=self.rank != 0 or not progress_bars(), file=sys.stderr, dynamic_ncols=True)
        self.objective.train()
        t_last, s_last = time.perf_counter(), self.step
        recent: dict = {}  # the latest value of each logged quantity (alternating steps log different ones)
        while self.step < self.total:
            epoch, first = divmod(self.step, self.per_epoch)
            self.batches.set_epoch(epoch)
            loader = DataLoader(self.batches, batch_size=None, sampler=range(first, self.per_epoch),
                                num_workers=run["workers"], pin_memory=self.device.type == "cuda")
            for batch in loader:
                t0 = time.perf_counter()
                batch = _to(batch, self.device)
                batch["step"] = self.step
                loss, logs = self.objective(batch)
                recent.update(logs)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optimizer)
                else:
                    loss.backward()
                if not self._grads_finite():
                    self.skipped += 1  # an exploding inverse or NaN: skip the update, keep the schedule
                    if self.scaler is not None:
                        self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
                else:
                    if self.cfg["optim"]["grad_clip"]:
                        nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["optim"]["grad_clip"])
                    if self.scaler is not None:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    else:
                        self.optimizer.step()
                    if self.ema is not None:
                        self.ema.update(self.model)
                self.scheduler.step()
                self.step += 1
                self.elapsed += time.perf_counter() - t0
                bar.update(1)
                if self.step % run["log_every"] == 0 or self.step == self.total:
                    vals = self._gather({"loss": loss.detach(), **recent})
                    now = time.perf_counter()
                    vals.update(lr=self.scheduler.get_last_lr()[0], it_s=(self.step - s_last) / (now - t_last),
                                skipped=self.skipped)
                    t_last, s_last = now, self.step
                    bar.set_postfix({k: f"{v:.4g}" for k, v in vals.items() if k in ("loss", "nll", "percep", "l1", "l2", "grad", "latent")})
                    if self.rank == 0:
                        self.log(vals)
                if self.validator is not None and (self.step % run["val_every"] == 0 or self.step == self.total):
                    with self._averaged():
                        vals = self.validator(self.resolver())
                    logger.info("step %d: %s", self.step, ", ".join(f"{k} {v:.3f}" for k, v in vals.items()))
                    self.log(vals, "val.csv")
                    self.objective.train()
                if self.step % run["ckpt_every"] == 0 or self.step == self.total:
                    self.save()
                if self.step >= self.total:
                    break
        bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.rank == 0:
            with self._averaged():
                return export_run(self.out, self.export, self.model, self.cfg, self.label, self.step, self.elapsed,
                                  self.skipped)
        return None

    def _averaged(self):
        """The model with its weights' average (optim.ema) inside the block, as it is without."""
        return self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext()

    def _grads_finite(self) -> bool:
        return grads_finite(self.model.parameters())
