"""Every model family the loader knows. Adding one: its module in this package, and its
`Family` in `FAMILIES` below."""
from __future__ import annotations

from typing import Any

from .family import Family
from .hcflow import HCFLOW
from .linf import LINF_1X1, LINF_PATCH
from .linf_lp import LINF_LP
from .srflow import SRFLOW
from .srflow_lp import SRFLOW_LP

FAMILIES: tuple[Family, ...] = (
    LINF_1X1,
    LINF_PATCH,
    SRFLOW,
    HCFLOW,
    LINF_LP,
    SRFLOW_LP,
)


def names(kind: str) -> list[str]:
    return sorted(f.name for f in FAMILIES if f.kind == kind)


def family(kind: str, name: str) -> Family:
    """The family called `name` of this kind; ValueError naming the known ones otherwise."""
    for f in FAMILIES:
        if f.kind == kind and f.name == name:
            return f
    raise ValueError(f"unknown {kind} family {name!r} (expected one of {names(kind)})")


def detect(kind: str | None, payload: Any) -> Family | None:
    """The family (of `kind`, or any) whose official layout `payload` is, or None
    (layouts are told apart by the families' `detect`, so at most one claims a payload:
    tests/test_families.py checks it on every reference file)"""
    return next((f for f in FAMILIES if f.detect is not None and (kind is None or f.kind == kind)
                 and f.detect(payload)), None)


def official_names(kind: str) -> list[str]:
    """The official model names the families of this kind read."""
    return sorted({n for f in FAMILIES if f.kind == kind for n in f.official_names})
