"""SRFlow-LP: FlowSR-LP's `unet` latent module with one branch per SRFlow latent part
(`input_proj0.`, `input_proj1.` ...)."""
from __future__ import annotations

import re

from ..priors.srflow_lp import SRFlowLatentModule, SRFlowPriorConfig
from .family import Family, Official
from .priors import official_spec, weight_names


def detect(ck) -> bool:
    spec = official_spec(ck)
    return spec is not None and spec.get("name") == "unet" and any(k.startswith("input_proj0.") for k in weight_names(spec))


def read(ck: dict) -> Official:
    spec = ck["prior_model"]
    args, sd = dict(spec.get("args", {})), spec["sd"]
    n = len({k.split(".")[0] for k in sd if re.match(r"input_proj\d+\.", k)})
    cfg = SRFlowPriorConfig(dim=int(args.get("dim", 64)), depth=int(args.get("depth", 3)),
                            latent_channels=tuple(sd[f"input_proj{i}.conv1.weight"].shape[1] for i in range(n)),
                            with_lr="lr_proj0.conv1.weight" in sd or "lr_proj0.0.weight" in sd)
    return Official(cfg, sd, "an SRFlow-LP UNet latent module")


SRFLOW_LP = Family("srflow-lp", "prior", SRFlowPriorConfig, SRFlowLatentModule, detect=detect, read=read,
                   official_names=("unet",))
