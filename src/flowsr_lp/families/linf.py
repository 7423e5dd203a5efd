"""LINF (1x1 and 3x3 patches): LINF's official `{'model': {'name', 'args', 'sd'}}` layout."""
from __future__ import annotations

from ..errors import CheckpointError
from ..flows.linf import LINF, LINFConfig
from ..nets import rdn, swinir
from .family import Family, Official

#: encoders whose sizes are read off the weights (released checkpoints declare none)
SIZED_ENCODERS = {"rdn": rdn, "swinir": swinir}
#: encoders whose declared args are kept (the rest, e.g. `no_upsampling`, are upstream's switches)
DECLARED_ARGS = {"edsr-baseline": ("n_resblocks", "n_feats", "res_scale"), "rrdb": ("nf", "nb", "gc")}


def _sized_encoder_args(name: str, declared: dict, sd: dict) -> dict:
    """Encoder sizes from the state dict's shapes, checked against any the checkpoint
    declares, before anything is allocated; sizes neither tells keep the released ones."""
    module = SIZED_ENCODERS[name]
    try:
        declared = module.official_args(declared)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    found = module.args_from_state_dict({k[8:]: v for k, v in sd.items() if k.startswith("encoder.")})
    for k, v in declared.items():
        if k in found and found[k] != v:
            raise CheckpointError(f"encoder_spec.args say {name} {k}={v} but the weights have {found[k]}")
    return {**declared, **found}


def detect(ck) -> bool:
    return isinstance(ck, dict) and isinstance(ck.get("model"), dict) and "sd" in ck["model"]


def read(ck: dict) -> Official:
    spec = ck["model"]
    name, args = spec.get("name"), spec.get("args", {})
    if name not in ("linf", "linf-patch"):
        raise CheckpointError(f"model name {name!r} is not supported (expected 'linf' or 'linf-patch')")
    enc = args.get("encoder_spec", {})
    if enc.get("name") in SIZED_ENCODERS:
        encoder_args = _sized_encoder_args(enc["name"], enc.get("args", {}), spec["sd"])
    elif enc.get("name") in DECLARED_ARGS:
        encoder_args = {k: v for k, v in enc.get("args", {}).items() if k in DECLARED_ARGS[enc["name"]]}
    else:
        raise CheckpointError(f"LINF encoder {enc.get('name')!r} is not supported "
                              f"(expected one of {sorted([*DECLARED_ARGS, *SIZED_ENCODERS])})")
    cfg = LINFConfig(
        encoder=enc["name"],
        encoder_args=encoder_args,
        patch_size=int(args.get("patch_size", 1)) if name == "linf-patch" else 1,
        flow_layers=int(args.get("flow_layers", 10)),
        num_layer=int(args.get("num_layer", 3)),
        hidden_dim=int(args.get("hidden_dim", 256)),
    )
    return Official(cfg, spec["sd"], f"a {name} model with a {cfg.encoder} encoder")


# one model class, two family names (a project file records which: `LINF.kind`)
LINF_1X1 = Family("linf", "flow", LINFConfig, LINF, detect=detect, read=read, official_names=("linf", "linf-patch"))
LINF_PATCH = Family("linf-patch", "flow", LINFConfig, LINF)
