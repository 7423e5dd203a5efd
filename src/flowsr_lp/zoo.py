"""Models shipped inside the package (small, CPU-trained; see weights/TRAINING.md)."""
from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_FLOW = WEIGHTS / "linf-small.safetensors"
DEFAULT_PRIOR = WEIGHTS / "linf-small-lp.safetensors"


def default_models() -> tuple[Path, Path | None]:
    """(flow, prior) used when the user names no --flow."""
    if not DEFAULT_FLOW.is_file():
        raise FileNotFoundError(f"no bundled model in {WEIGHTS}; pass --flow CHECKPOINT")
    return DEFAULT_FLOW, DEFAULT_PRIOR if DEFAULT_PRIOR.is_file() else None
