"""Small models shipped inside the package (trained on the CPU with configs/cpu/*; how each
was trained is in weights/TRAINING.md and in each file's metadata)."""
from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
BUNDLED = ("linf-small", "linf-small-lp", "srflow-small", "srflow-small-lp")


def bundled_path(name: str) -> Path:
    if name not in BUNDLED:
        raise KeyError(f"no bundled model {name!r} (have {', '.join(BUNDLED)})")
    return WEIGHTS / f"{name}.safetensors"


def default_models() -> tuple[Path, Path | None]:
    """(flow, prior) used by `flowsr-lp upscale` when no --flow is given: the small LINF and
    its latent module (any scale)."""
    flow, prior = bundled_path("linf-small"), bundled_path("linf-small-lp")
    if not flow.is_file():
        raise FileNotFoundError(f"no bundled model at {flow}; pass --flow CHECKPOINT")
    return flow, prior if prior.is_file() else None
