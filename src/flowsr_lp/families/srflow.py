"""SRFlow: the released raw state dict (`RRDB.*`, `flowUpsamplerNet.*`, optional `module.`).

The RRDB blocks the flow is conditioned on are not stored in a state dict (only their number
is): they default to the released models' for the scale, and the loader logs that it assumed
them; `taps=` (`--taps`) overrides."""
from __future__ import annotations

from ..errors import CheckpointError
from ..flows.srflow import RELEASED_TAPS, SRFlow, SRFlowConfig, config_from_state_dict
from .family import Family, Official, is_state_dict, strip_prefix


def detect(ck) -> bool:
    return is_state_dict(ck) and any(k.startswith("flowUpsamplerNet.") for k in strip_prefix(ck))


def read(ck: dict, taps=None) -> Official:
    sd = strip_prefix(ck)
    try:
        cfg = config_from_state_dict(sd, taps=taps)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"SRFlow state dict: {e}") from None
    assumed = {} if taps is not None else {"taps": f"{list(cfg.taps)} (the released x{cfg.scale} models'; "
                                                   "pass taps= / --taps for another model)"}
    return Official(cfg, sd, f"an SRFlow x{cfg.scale} model (nb {cfg.nb}, K {cfg.K}, L {cfg.L})", assumed)


def default_taps(config: dict) -> dict:
    """A config without taps conditions on the released models' blocks for its scale."""
    return {"taps": RELEASED_TAPS.get(config.get("scale", 4), RELEASED_TAPS[4])}


SRFLOW = Family("srflow", "flow", SRFlowConfig, SRFlow, detect=detect, read=read, options=("taps",),
                defaults=default_taps)
