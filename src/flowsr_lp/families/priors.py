"""FlowSR-LP's official latent-module layout, `{'prior_model': {'name', 'args', 'sd'}}`."""
from __future__ import annotations

from typing import Any


def official_spec(ck: Any) -> dict | None:
    """The `prior_model` record of a FlowSR-LP checkpoint, or None."""
    spec = ck.get("prior_model") if isinstance(ck, dict) else None
    return spec if isinstance(spec, dict) else None


def weight_names(spec: dict) -> list[str]:
    """The names in `spec['sd']` (none when it is not a dict: the strict load says so)."""
    sd = spec.get("sd")
    return [k for k in sd if isinstance(k, str)] if isinstance(sd, dict) else []
