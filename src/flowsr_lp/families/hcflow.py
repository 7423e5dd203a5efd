"""HCFlow: the released raw state dict (`flow.layers.N.*`, `flow.level{l}_condFlow.*`, as
`SR_DF2K_X4_HCFlow++.pth` and `SR_CelebA_X8_HCFlow++.pth` are stored; optional `module.`).
Everything (levels, K, steps after the split, widths, RRDB blocks, nf, gc) follows from the
key names and shapes."""
from __future__ import annotations

from ..errors import CheckpointError
from ..flows.hcflow import HCFlow, HCFlowConfig, config_from_state_dict
from .family import Family, Official, is_state_dict, strip_prefix


def detect(ck) -> bool:
    return is_state_dict(ck) and any(k.startswith("flow.level0_condFlow.") for k in strip_prefix(ck))


def read(ck: dict) -> Official:
    sd = strip_prefix(ck)
    try:
        cfg = config_from_state_dict(sd)
    except (KeyError, ValueError, IndexError, StopIteration) as e:
        raise CheckpointError(f"HCFlow state dict: {e}") from None
    return Official(cfg, sd, f"an HCFlow x{cfg.scale} model (K {cfg.K}, after the split {list(cfg.after_split)}, "
                             f"RRDB {list(cfg.rrdb_nb)}, nf {cfg.nf})")


HCFLOW = Family("hcflow", "flow", HCFlowConfig, HCFlow, detect=detect, read=read)
