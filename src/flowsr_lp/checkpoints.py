"""Checkpoint formats, kept apart from the models.

Recognised:
- the project's own: one `.safetensors` file whose header metadata carries a JSON record
  `{"format": "flowsr-lp", "version": 1, "kind": "flow" | "prior", "family": ..., "config": {...}}`;
- LINF's official `{'model': {'name': 'linf' | 'linf-patch', 'args', 'sd'}}`;
- SRFlow's raw state dict (`RRDB.*`, `flowUpsamplerNet.*`, optional `module.` prefix);
- FlowSR-LP's `{'prior_model': {'name', 'args', 'sd'}}` (latent modules).
Loading never unpickles code (`weights_only=True`) and is strict; anything else gets a
one-line `CheckpointError` that names what was expected.
"""
from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import CheckpointError, first_line
from .flows.linf import LINF, LINFConfig
from .flows.srflow import SRFlow, SRFlowConfig, config_from_state_dict
from .hub.resolve import resolve
from .images import atomic_write
from .nets import rdn, swinir
from .priors.linf_lp import LINFLatentModule, LINFPriorConfig
from .priors.srflow_lp import SRFlowLatentModule, SRFlowPriorConfig

FORMAT = "flowsr-lp"
EXPECTED_FLOW = ("an official LINF checkpoint ({'model': {'name': 'linf'|'linf-patch', ...}}), "
                 "an SRFlow state dict, or a flowsr-lp .safetensors flow")


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def read_checkpoint(path: str | Path) -> tuple[Any, dict | None]:
    """Return (payload, project metadata or None). Payload: a state dict for our own
    format, whatever `torch.load(weights_only=True)` gives otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if _is_safetensors(path):
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
            if FORMAT not in meta:
                raise CheckpointError(f"{path}: a .safetensors file without flowsr-lp metadata "
                                      "(no model config inside); save it with flowsr_lp.save_flow/save_prior")
            return sd, json.loads(meta[FORMAT])
        return torch.load(path, map_location="cpu", weights_only=True), None
    except CheckpointError:
        raise
    except Exception as e:  # truncated zip, pickle with code in it, garbage bytes ...
        first = first_line(e)[:160]
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or not a checkpoint: {first})") from None


def strip_prefix(sd: dict, prefix: str = "module.") -> dict:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _check_match(own: dict, sd: dict, what: str, path: Path) -> None:
    """A CheckpointError naming what differs between a model's state dict (or its shapes)
    and a file's, one phrase each."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: file {list(sd[k].shape)} vs model {list(own[k].shape)})")
    if parts:
        raise CheckpointError(f"{path}: does not match {what}: " + "; ".join(parts))


def _build_on_meta(build: Callable[[], nn.Module], sd: dict, what: str, path: Path) -> nn.Module:
    """Build the declared model without memory (device "meta") and compare its shapes with
    the file's before anything real is allocated; a declared config that would register far
    more parameters than the file holds tensors is stopped while it is being built.
    Returns the meta model."""
    limit, count, me = 4 * len(sd) + 64, [0], threading.get_ident()

    def guard(module, name, param):
        if threading.get_ident() == me:
            count[0] += 1
            if count[0] > limit:
                raise CheckpointError(f"{path}: its config declares a model with over {limit} parameter tensors, "
                                      f"but the file holds {len(sd)}: it does not match {what}")

    handle = nn.modules.module.register_module_parameter_registration_hook(guard)
    try:
        with torch.device("meta"):
            model = build()
    except CheckpointError:
        raise
    except Exception as e:  # absurd or mistyped sizes: overflow, negative dims, wrong types ...
        first = first_line(e)[:160]
        raise CheckpointError(f"{path}: its config cannot describe {what} ({first})") from None
    finally:
        handle.remove()
    _check_match(model.state_dict(), sd, what, path)
    return model


@contextmanager
def _malformed_fields(path: Path):
    """Fields of an official checkpoint of the wrong type or missing: one line, not a traceback."""
    try:
        yield
    except CheckpointError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise CheckpointError(f"{path}: malformed checkpoint fields ({type(e).__name__}: {first})") from None


def load_strict(model: nn.Module | Callable[[], nn.Module], sd: dict, what: str, path: Path) -> nn.Module:
    """Strict load with a one-line summary of any mismatch. Given a builder instead of a
    module, the declared sizes are checked against the file's shapes before the model is
    built (`_build_on_meta`)."""
    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise CheckpointError(f"{path}: the weights of {what} are not a state dict of named tensors")
    if isinstance(model, nn.Module):
        _check_match(model.state_dict(), sd, what, path)
    else:  # checked on the meta build, which is then given (uninitialised) memory instead of
        # building the model again: the strict load below overwrites every parameter and buffer
        model = _build_on_meta(model, sd, what, path).to_empty(device=torch.get_default_device())
    model.load_state_dict(sd, strict=True)
    return model


def save_module(model: nn.Module, path: str | Path, kind: str, family: str, config: dict,
                extra: dict | None = None) -> Path:
    """Write weights + config as one self-describing .safetensors file, atomically."""
    record = {"format": FORMAT, "version": 1, "kind": kind, "family": family, "config": config}
    record.update(extra or {})
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {FORMAT: json.dumps(record)}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


# ---- flows ------------------------------------------------------------------------------
#: LINF encoders whose sizes are read off the weights (released checkpoints declare none)
_SIZED_ENCODERS = {"rdn": rdn, "swinir": swinir}


def _sized_encoder_args(name: str, declared: dict, sd: dict, path: Path) -> dict:
    """Encoder sizes from the state dict's shapes, checked against any the checkpoint
    declares, before anything is allocated; sizes neither tells keep the released ones."""
    module = _SIZED_ENCODERS[name]
    try:
        declared = module.official_args(declared)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    found = module.args_from_state_dict({k[8:]: v for k, v in sd.items() if k.startswith("encoder.")})
    for k, v in declared.items():
        if k in found and found[k] != v:
            raise CheckpointError(f"{path}: encoder_spec.args say {name} {k}={v} but the weights have {found[k]}")
    return {**declared, **found}


def _linf_from_official(ck: dict, path: Path, taps=None):
    if taps is not None:
        raise CheckpointError(f"{path}: RRDB taps only apply to SRFlow checkpoints, this is a LINF one")
    spec = ck["model"]
    name, args = spec.get("name"), spec.get("args", {})
    if name not in ("linf", "linf-patch"):
        raise CheckpointError(f"{path}: model name {name!r} is not supported (expected 'linf' or 'linf-patch')")
    enc = args.get("encoder_spec", {})
    keep = {"edsr-baseline": ("n_resblocks", "n_feats", "res_scale"), "rrdb": ("nf", "nb", "gc")}
    if enc.get("name") in _SIZED_ENCODERS:
        encoder_args = _sized_encoder_args(enc["name"], enc.get("args", {}), spec["sd"], path)
    elif enc.get("name") in keep:
        encoder_args = {k: v for k, v in enc.get("args", {}).items() if k in keep[enc["name"]]}
    else:
        raise CheckpointError(f"{path}: LINF encoder {enc.get('name')!r} is not supported "
                              f"(expected one of {sorted([*keep, *_SIZED_ENCODERS])})")
    cfg = LINFConfig(
        encoder=enc["name"],
        encoder_args=encoder_args,
        patch_size=int(args.get("patch_size", 1)) if name == "linf-patch" else 1,
        flow_layers=int(args.get("flow_layers", 10)),
        num_layer=int(args.get("num_layer", 3)),
        hidden_dim=int(args.get("hidden_dim", 256)),
    )
    return load_strict(lambda: LINF(cfg), spec["sd"], f"a {name} model with a {cfg.encoder} encoder", path)


def build_model(kind: str, family: str, config: dict) -> nn.Module:
    """A new flow or latent module from its family name and config dict (random weights)."""
    builders = {
        ("flow", "linf"): lambda c: LINF(LINFConfig.from_dict(c)),
        ("flow", "linf-patch"): lambda c: LINF(LINFConfig.from_dict(c)),
        ("flow", "srflow"): lambda c: SRFlow(SRFlowConfig.from_dict(c)),
        ("prior", "linf-lp"): lambda c: LINFLatentModule(LINFPriorConfig.from_dict(c)),
        ("prior", "srflow-lp"): lambda c: SRFlowLatentModule(SRFlowPriorConfig.from_dict(c)),
    }
    build = builders.get((kind, family))
    if build is None:
        known = sorted(f for k, f in builders if k == kind)
        raise ValueError(f"unknown {kind} family {family!r} (expected one of {known})")
    return build(config or {})


def _project_model(meta: dict, path: Path, kind: str) -> Callable[[], nn.Module]:
    """A builder of the model a project-format file describes (see `load_strict`)."""
    if meta.get("kind") != kind:
        other = {"flow": "--flow / load_flow", "prior": "--prior / load_prior"}.get(meta.get("kind"))
        raise CheckpointError(f"{path}: a flowsr-lp {meta.get('kind')} checkpoint, not a "
                              f"{'flow' if kind == 'flow' else 'latent module'}" + (f" (pass it as {other})" if other else ""))
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: flowsr-lp metadata without a config record")
    return lambda: build_model(kind, meta.get("family"), meta["config"])  # built by load_strict, after checks


_FLOW_ADAPTERS: list[tuple[Callable[[Any], bool], Callable[[Any, Path], nn.Module]]] = []


def flow_adapter(detect: Callable[[Any], bool]):
    """Register a reader for an official flow checkpoint layout."""
    def wrap(fn):
        _FLOW_ADAPTERS.append((detect, fn))
        return fn
    return wrap


flow_adapter(lambda ck: isinstance(ck, dict) and isinstance(ck.get("model"), dict) and "sd" in ck["model"])(_linf_from_official)


def _is_srflow(ck) -> bool:
    if not isinstance(ck, dict) or not ck:
        return False
    keys = strip_prefix(ck).keys()
    return all(isinstance(v, torch.Tensor) for v in ck.values()) and any(k.startswith("flowUpsamplerNet.") for k in keys)


@flow_adapter(_is_srflow)
def _srflow_from_state_dict(ck: dict, path: Path, taps=None):
    sd = strip_prefix(ck)
    try:
        cfg = config_from_state_dict(sd, taps=taps)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: SRFlow state dict: {e}") from None
    return load_strict(lambda: SRFlow(cfg), sd, f"an SRFlow x{cfg.scale} model (nb {cfg.nb}, K {cfg.K}, L {cfg.L})", path)


def load_flow(path: str | Path, device: str | torch.device = "cpu", *, taps=None):
    """Load a flow from any supported checkpoint; returns it in eval mode on `device`.

    `taps`: the RRDB block indices an SRFlow model conditions on, which a state dict cannot
    tell (only their number); default: the released models' ones for that scale.
    `path`: a file, a registry name (`flowsr-lp models`), an http(s) URL or hf://owner/repo/file."""
    path = resolve(path, "flow")
    ck, meta = read_checkpoint(path)
    if meta is not None:
        model = load_strict(_project_model(meta, path, "flow"), ck, f"a {meta.get('family')} flow", path)
    else:
        if isinstance(ck, dict) and "prior_model" in ck:
            raise CheckpointError(f"{path}: a FlowSR-LP latent-module checkpoint, not a flow (pass it as --prior / load_prior)")
        for detect, build in _FLOW_ADAPTERS:
            if detect(ck):
                with _malformed_fields(path):
                    model = build(ck, path, taps=taps)
                break
        else:
            raise CheckpointError(f"{path}: unrecognised checkpoint layout; expected {EXPECTED_FLOW}")
    return model.to(device).eval()


def save_flow(flow, path: str | Path, **extra) -> Path:
    """Write a flow in the project format (weights + config in one .safetensors file)."""
    return save_module(flow, path, "flow", flow.kind, flow.config.to_dict(), extra)


# ---- priors (latent modules) -------------------------------------------------------------
EXPECTED_PRIOR = ("a FlowSR-LP latent-module checkpoint ({'prior_model': {'name', 'args', 'sd'}}) "
                  "or a flowsr-lp .safetensors prior")


def _prior_from_official(spec: dict, path: Path):
    name, args, sd = spec.get("name"), dict(spec.get("args", {})), spec.get("sd", {})
    if name == "unet" and any(k.startswith("input_proj0.") for k in sd):  # SRFlow-LP: one branch per latent
        n = len({k.split(".")[0] for k in sd if re.match(r"input_proj\d+\.", k)})
        cfg = SRFlowPriorConfig(dim=int(args.get("dim", 64)), depth=int(args.get("depth", 3)),
                                latent_channels=tuple(sd[f"input_proj{i}.conv1.weight"].shape[1] for i in range(n)),
                                with_lr="lr_proj0.conv1.weight" in sd or "lr_proj0.0.weight" in sd)
        return load_strict(lambda: SRFlowLatentModule(cfg), sd, "an SRFlow-LP UNet latent module", path)
    generator = {"unet": "unet", "edsr-baseline-latent": "edsr-baseline-latent", "swin_latent": "swin_latent"}.get(name)
    if generator is None:
        raise CheckpointError(f"{path}: latent module {name!r} is not supported "
                              "(expected 'unet', 'edsr-baseline-latent' or 'swin_latent')")
    has_prior, has_lr = any(k.startswith("input_proj.") for k in sd), any(k.startswith("lr_proj.") for k in sd)
    known = {"in_chans", "dim", "depth", "n_resblocks", "res_scale", "embed_dim", "depths", "num_heads",
             "window_size", "mlp_ratio"}
    cfg = LINFPriorConfig.from_dict({"generator": generator, **{k: v for k, v in args.items() if k in known},
                                     "inputs": "both" if has_prior == has_lr else "prior" if has_prior else "lr"})
    return load_strict(lambda: LINFLatentModule(cfg), sd, f"a LINF-LP latent module with a {generator} generator", path)


def load_prior(path: str | Path, device: str | torch.device = "cpu"):
    """Load a latent module (official `{'prior_model': ...}` or project format), eval mode.
    `path`: a file, a registry name, an http(s) URL or hf://owner/repo/file."""
    path = resolve(path, "prior")
    ck, meta = read_checkpoint(path)
    if meta is not None:
        model = load_strict(_project_model(meta, path, "prior"), ck, f"a {meta.get('family')} latent module", path)
    elif isinstance(ck, dict) and isinstance(ck.get("prior_model"), dict):
        with _malformed_fields(path):
            model = _prior_from_official(ck["prior_model"], path)
    elif isinstance(ck, dict) and ("model" in ck or _is_srflow(ck)):
        raise CheckpointError(f"{path}: a flow checkpoint, not a latent module (pass it as --flow / load_flow)")
    else:
        raise CheckpointError(f"{path}: unrecognised checkpoint layout; expected {EXPECTED_PRIOR}")
    return model.to(device).eval()


def save_prior(prior, path: str | Path, **extra) -> Path:
    """Write a latent module in the project format (weights + config in one file)."""
    return save_module(prior, path, "prior", prior.kind, prior.config.to_dict(), extra)
