"""Argument types and option groups shared by the `flowsr_lp.cli` commands, so every command spells
them alike. Part of the command line (kept outside the `cli` package so that its command modules
import no sibling); library code does not import it."""
from __future__ import annotations

import argparse
import re

import torch

from . import sizes
from .errors import UsageError
from .pipeline import MAX_TAU
from .precision import PRECISIONS
from .runtime import configure_cpu


def parse_scale(text: str) -> float | tuple[float, float]:
    """'4', '3.5', '2,3' or '2x3' (rows, columns)."""
    parts = re.split(r"[,x]", text.strip())
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid scale {text!r} (expected S or SH,SW)") from None
    if len(vals) not in (1, 2) or not all(0 < v < float("inf") for v in vals):
        raise argparse.ArgumentTypeError(f"scale must be positive, got {text!r}")
    return vals[0] if len(vals) == 1 else (vals[0], vals[1])


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return v


def temperature(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid temperature {text!r}") from None
    if not 0 <= v <= MAX_TAU:
        raise argparse.ArgumentTypeError(f"temperature must be a finite number in [0, {MAX_TAU:g}], got {text!r}")
    return v


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r} (expected an integer)") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{what} must be >= {low}, got {text!r}")
        return v
    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _int_at_least(1, "positive integer")


def tile_option(text: str) -> str | int:
    """--tile: auto, off or a tile side in LR pixels."""
    if text in ("auto", "off"):
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid tile {text!r} (expected auto, off or a side in LR pixels)") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"tile side must be >= 1 LR pixel, got {text!r}")
    return v
count = _int_at_least(0, "count")
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range, less room for seed + retries


def seed(text: str) -> int:
    """A random seed in [0, 2^63 - 1]."""
    v = _int_at_least(0, "seed")(text)
    if v > MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed must be <= 2^63 - 1, got {text!r}")
    return v


def parse_taps(text: str) -> list[int]:
    """SRFlow's RRDB tap indices: '1,8,15,22'."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid taps {text!r} (expected comma-separated block indices)") from None


def parse_size(text: str) -> tuple[int, int]:
    """`sizes.parse_size`: the grammar the app shares."""
    try:
        return sizes.parse_size(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="torch device: auto (CUDA when available, else CPU), cpu, cuda, cuda:1, mps ... (default auto)")


def add_precision(p: argparse.ArgumentParser, default: str = "fp32") -> None:
    p.add_argument("--precision", choices=PRECISIONS, default=default,
                   help="what the encoder, conditioning networks and latent module compute in; the flow's "
                        f"transform stays fp32. auto: bf16 where the hardware has bf16 units (default {default})")


def add_taps(p: argparse.ArgumentParser) -> None:
    p.add_argument("--taps", type=parse_taps, default=None,
                   help="SRFlow only: RRDB block indices the flow conditions on, e.g. 1,8,15,22 "
                        "(default: the released models' ones)")


def add_scales(p: argparse.ArgumentParser, default: list[float]) -> None:
    """`--scale S [S ...]` (alias `--scales`) for commands that take several scales."""
    p.add_argument("--scale", "--scales", dest="scales", nargs="+", type=positive_float, default=default,
                   metavar="S", help=f"upscaling factors (default {' '.join(f'{s:g}' for s in default)})")


def add_taus(p: argparse.ArgumentParser, default: list[float] | None, what: str) -> None:
    """`--tau T [T ...]` (alias `--taus`) for commands that take several temperatures."""
    p.add_argument("--tau", "--taus", dest="taus", nargs="+", type=temperature, default=default, metavar="T",
                   help=what)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; a device that is not there is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"invalid --device {name!r} (expected auto, cpu, cuda, cuda:N, mps ...)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {name}: no such CUDA device here (use --device auto or cpu)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here (use --device auto or cpu)")
    backend = getattr(torch, dev.type, None)
    if dev.type == "meta" or (dev.type not in ("cpu", "cuda", "mps") and not getattr(backend, "is_available", lambda: False)()):
        raise UsageError(f"--device {name}: not a device that can run the models here (use --device auto or cpu)")
    return dev


def inference_device(name: str, threads: int | None = None) -> torch.device:
    """`resolve_device`; on the CPU also sets the threads (`threads`, else OMP_NUM_THREADS or
    a caller's torch.set_num_threads, else the cores idle now) and the allocator for
    inference (`configure_cpu`)."""
    device = resolve_device(name)
    if device.type == "cpu":
        configure_cpu(threads)
    return device
