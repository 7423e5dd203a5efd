"""LINF-LP: FlowSR-LP's latent modules for LINF (`unet`, and the paper's alternative
generators `edsr-baseline-latent` and `swin_latent`), one latent map."""
from __future__ import annotations

from ..priors.linf_lp import GENERATORS, LINFLatentModule, LINFPriorConfig
from . import srflow_lp
from .family import Family, Official
from .priors import official_spec, weight_names

#: the official args that map onto LINFPriorConfig fields (others are upstream switches)
KNOWN_ARGS = ("in_chans", "dim", "depth", "n_resblocks", "res_scale", "embed_dim", "depths", "num_heads",
              "window_size", "mlp_ratio")


def detect(ck) -> bool:
    spec = official_spec(ck)
    return spec is not None and spec.get("name") in GENERATORS and not srflow_lp.detect(ck)


def read(ck: dict) -> Official:
    spec = ck["prior_model"]
    name, args, sd = spec["name"], dict(spec.get("args", {})), spec.get("sd")
    names = weight_names(spec)
    has_prior, has_lr = any(k.startswith("input_proj.") for k in names), any(k.startswith("lr_proj.") for k in names)
    cfg = LINFPriorConfig.from_dict({"generator": name, **{k: v for k, v in args.items() if k in KNOWN_ARGS},
                                     "inputs": "both" if has_prior == has_lr else "prior" if has_prior else "lr"})
    return Official(cfg, sd, f"a LINF-LP latent module with a {name} generator")


LINF_LP = Family("linf-lp", "prior", LINFPriorConfig, LINFLatentModule, detect=detect, read=read,
                 official_names=GENERATORS)
