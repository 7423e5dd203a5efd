"""Compute precision: which dtype the networks around a flow run in, and what the hardware
offers. Reduced precision (bf16 / fp16) is applied with autocast to the encoder, the
conditioning networks and the latent module; the flows' invertible transforms and their
log-determinants always run in float32 (`full_precision`: no autocast, no TF32 on CUDA),
because the inverse is where rounding turns into exploding values."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import threading
from pathlib import Path

import torch

from .errors import UsageError
from .runtime import available_cpus

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}
_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
#: /proc/cpuinfo flags of CPU units that compute bf16 products natively
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=None)
def _cpuinfo_lines() -> tuple[str, ...]:
    """Linux /proc/cpuinfo, read once (empty elsewhere)."""
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return ()


def _cpuinfo(key: str) -> str | None:
    """The value of the first /proc/cpuinfo line starting with `key` (None where there is none)."""
    return next((line.split(":", 1)[1] for line in _cpuinfo_lines() if line.startswith(key)), None)


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    model = _cpuinfo("model name")
    return model.strip() if model is not None else platform.processor() or platform.machine()


def cpu_bf16_units() -> list[str]:
    """Names of the CPU's native bf16 matrix units (empty when it has none)."""
    units = [f for f in BF16_CPU_FLAGS if f in cpu_flags()]
    if not units and "AMX" in torch.backends.cpu.get_cpu_capability():
        units = ["amx"]
    return units


def has_bf16_units(device: torch.device | str) -> bool:
    """Whether `device` itself (not the current CUDA device) computes bf16 natively: CUDA
    compute capability 8.0 (Ampere) or later, AMX / AVX512-BF16 on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return bool(cpu_bf16_units())
    return False


def parse_precision(name: str | torch.dtype) -> str:
    """'fp32' | 'bf16' | 'fp16' | 'auto' (also 'float32', 'bfloat16', 'float16' or a dtype)."""
    if isinstance(name, torch.dtype):
        if name not in _NAMES:
            raise UsageError(f"unsupported precision {name}; expected one of {', '.join(PRECISIONS)}")
        return _NAMES[name]
    key = str(name).lower()
    if key == "auto":
        return key
    if key not in _DTYPES:
        raise UsageError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")
    return _NAMES[_DTYPES[key]]


def resolve_precision(name: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype to compute in on `device`. 'auto' is bf16 where the hardware has bf16
    matrix units (AMX / AVX512-BF16 on the CPU, bf16-capable GPUs), else fp32; the choice
    is logged with its reason."""
    key = parse_precision(name)
    device = torch.device(device)
    if key == "bf16" and device.type == "cuda" and torch.cuda.is_available() and not has_bf16_units(device):
        raise UsageError(f"precision bf16: {device} has no bf16 support (compute capability "
                         f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}, bf16 needs 8.0); "
                         "use fp16 or fp32")
    if key != "auto":
        return _DTYPES[key]
    if has_bf16_units(device):
        why = ", ".join(cpu_bf16_units()) if device.type == "cpu" else torch.cuda.get_device_name(device)
        log.info("precision auto: bf16 (%s has bf16 matrix units: %s)", device.type, why)
        return torch.bfloat16
    log.info("precision auto: fp32 (no bf16 matrix units on %s)", device.type)
    return torch.float32


def precision_name(dtype: torch.dtype) -> str:
    return _NAMES[dtype]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast computes in on x's device now (x's own dtype outside autocast)."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def reduced(dtype: torch.dtype, device: torch.device | str):
    """Autocast to `dtype` on `device` (a no-op context for fp32)."""
    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class _ExactFloat32:
    """TF32 off for float32 CUDA matmuls and cuDNN convolutions (cuDNN uses TF32 by default
    on Ampere and later GPUs). The flags are process-wide: the first context to enter turns
    TF32 off, the last to leave (in any thread) restores the flags as they were."""

    FLAGS = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)

    def __init__(self):
        self.lock, self.depth, self.saved = threading.Lock(), 0, ()

    def __enter__(self):
        with self.lock:
            if self.depth == 0:
                self.saved = tuple(f.fp32_precision for f in self.FLAGS)
                for f in self.FLAGS:
                    f.fp32_precision = "ieee"
            self.depth += 1

    def __exit__(self, *exc):
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                for f, v in zip(self.FLAGS, self.saved):
                    f.fp32_precision = v


#: `with exact_float32:` computes float32 as float32 on CUDA (no TF32)
exact_float32 = _ExactFloat32()


@contextlib.contextmanager
def full_precision(device: torch.device | str):
    """Autocast switched off and TF32 off (`exact_float32`): for the flows' invertible
    transforms (cast their inputs to float32 as they enter)."""
    with torch.autocast(torch.device(device).type, enabled=False), exact_float32:
        yield


#: device types without float64 arithmetic: float64 work on their tensors runs on the CPU
NO_FLOAT64 = frozenset({"mps"})


def float64_device(device: torch.device | str) -> torch.device:
    """Where float64 work on `device`'s tensors runs: the device itself, or the CPU for a
    device without float64 (MPS)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type in NO_FLOAT64 else device


def to_float64(x: torch.Tensor) -> torch.Tensor:
    """`x` in float64, moved to the CPU when its device has no float64 (`float64_device`)."""
    return x.to(float64_device(x.device), torch.float64)


def _to_float32(a):
    if isinstance(a, torch.Tensor) and a.is_floating_point():
        return a.float()
    if isinstance(a, tuple):
        return tuple(_to_float32(x) for x in a)
    return a


def float32_transform(method):
    """Decorator for a flow module's invertible transform: it runs with autocast and TF32
    off (`full_precision`) and its tensor (or tuple-of-tensor) arguments cast to float32."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with full_precision(next(self.parameters()).device):
            return method(self, *(_to_float32(a) for a in args), **{k: _to_float32(v) for k, v in kwargs.items()})

    return run


def hardware_line() -> str:
    """One line naming what a figure was measured on."""
    units = cpu_bf16_units()
    parts = [f"CPU {cpu_model()} ({available_cpus()} available, torch threads {torch.get_num_threads()}, "
             f"bf16 units: {', '.join(units) if units else 'none'}, capability {torch.backends.cpu.get_cpu_capability()})"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        parts.append(f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB, bf16 "
                     f"{'yes' if has_bf16_units('cuda') else 'no'})")
    else:
        parts.append("no GPU")
    try:
        load = "load %.2f %.2f %.2f" % os.getloadavg()
    except (AttributeError, OSError):
        load = "load n/a"
    parts += [f"torch {torch.__version__}", load]
    return "; ".join(parts)
