"""Checkpoint formats, kept apart from the models.

Recognised:
- the project's own: one `.safetensors` file whose header metadata carries a JSON record
  `{"format": "flowsr-lp", "version": 1, "kind": "flow" | "prior", "family": ..., "config": {...}}`;
- every official layout a model family registers (`families/`): LINF's
  `{'model': {'name', 'args', 'sd'}}`, SRFlow's raw state dict, FlowSR-LP's
  `{'prior_model': {'name', 'args', 'sd'}}` ...
Loading never unpickles code (`weights_only=True`) and is strict; anything else gets a
one-line `CheckpointError` that names what was expected.
"""
from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import CheckpointError, first_line
from .families import registry
from .families.family import Family
from .families.priors import official_spec
from .hub.resolve import resolve
from .images import atomic_write

log = logging.getLogger(__name__)

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
                extra: dict | None = None, float16: tuple[str, ...] = ()) -> Path:
    """Write weights + config as one self-describing .safetensors file, atomically. Parameters
    whose names start with one of `float16` are stored in float16 (loading casts them back to
    the model's float32), half the bytes for weights that tolerate the rounding; the record
    lists the prefixes."""
    record = {"format": FORMAT, "version": 1, "kind": kind, "family": family, "config": config}
    record.update(extra or {})
    halved = {n for n, _ in model.named_parameters() if n.startswith(float16)}  # none for ()
    if halved:
        record["stored_float16"] = list(float16)
    sd = {k: (v.detach().half() if k in halved else v.detach()).cpu().contiguous().clone()
          for k, v in model.state_dict().items()}
    meta = {FORMAT: json.dumps(record)}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


# ---- families ----------------------------------------------------------------------------
def build_model(kind: str, family: str, config: dict) -> nn.Module:
    """A new flow or latent module from its family name and config dict (random weights)."""
    return registry.family(kind, family).build(config or {})


def _project_model(meta: dict, path: Path, kind: str) -> Callable[[], nn.Module]:
    """A builder of the model a project-format file describes (see `load_strict`)."""
    if meta.get("kind") != kind:
        other = {"flow": "--flow / load_flow", "prior": "--prior / load_prior"}.get(meta.get("kind"))
        raise CheckpointError(f"{path}: a flowsr-lp {meta.get('kind')} checkpoint, not a "
                              f"{'flow' if kind == 'flow' else 'latent module'}" + (f" (pass it as {other})" if other else ""))
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: flowsr-lp metadata without a config record")
    return lambda: build_model(kind, meta.get("family"), meta["config"])  # built by load_strict, after checks


def _load_official(family: Family, ck: Any, path: Path, options: dict) -> nn.Module:
    """Read an official layout through its family, then build and load it strictly."""
    for name, value in options.items():
        if value is not None and name not in family.options:
            what = "RRDB taps" if name == "taps" else name
            raise CheckpointError(f"{path}: {what} do not apply to {family.name} checkpoints")
    with _malformed_fields(path):
        try:
            official = family.read(ck, **{k: v for k, v in options.items() if k in family.options})
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        for name, value in official.assumed.items():
            log.info("%s: %s = %s", path, name, value)
        return load_strict(lambda: family.model(official.config), official.state_dict, official.what, path)


def _load(path, kind: str, options: dict, expected: str) -> nn.Module:
    ck, meta = read_checkpoint(path)
    if meta is not None:
        return load_strict(_project_model(meta, path, kind), ck, f"a {meta.get('family')} "
                           f"{'flow' if kind == 'flow' else 'latent module'}", path)
    family = registry.detect(kind, ck)
    if family is not None:
        return _load_official(family, ck, path, options)
    other = registry.detect(None, ck)
    if kind == "flow" and (other is not None or official_spec(ck) is not None):
        raise CheckpointError(f"{path}: a FlowSR-LP latent-module checkpoint, not a flow (pass it as --prior / load_prior)")
    if kind == "prior" and (other is not None or isinstance(ck, dict) and "model" in ck):
        raise CheckpointError(f"{path}: a flow checkpoint, not a latent module (pass it as --flow / load_flow)")
    if kind == "prior" and official_spec(ck) is not None:
        names = " or ".join(repr(n) for n in registry.official_names("prior"))
        raise CheckpointError(f"{path}: latent module {official_spec(ck).get('name')!r} is not supported (expected {names})")
    raise CheckpointError(f"{path}: unrecognised checkpoint layout; expected {expected}")


def load_flow(path: str | Path, device: str | torch.device = "cpu", *, taps=None):
    """Load a flow from any supported checkpoint; returns it in eval mode on `device`.

    `taps`: the RRDB block indices an SRFlow model conditions on, which a state dict cannot
    tell (only their number); default: the released models' ones for that scale (logged).
    `path`: a file, a registry name (`flowsr-lp models`), an http(s) URL or hf://owner/repo/file."""
    path = resolve(path, "flow")
    return _load(path, "flow", {"taps": taps}, EXPECTED_FLOW).to(device).eval()


def save_flow(flow, path: str | Path, **extra) -> Path:
    """Write a flow in the project format (weights + config in one .safetensors file)."""
    return save_module(flow, path, "flow", flow.kind, flow.config.to_dict(), extra)


# ---- priors (latent modules) -------------------------------------------------------------
EXPECTED_PRIOR = ("a FlowSR-LP latent-module checkpoint ({'prior_model': {'name', 'args', 'sd'}}) "
                  "or a flowsr-lp .safetensors prior")


def load_prior(path: str | Path, device: str | torch.device = "cpu"):
    """Load a latent module (official `{'prior_model': ...}` or project format), eval mode.
    `path`: a file, a registry name, an http(s) URL or hf://owner/repo/file."""
    path = resolve(path, "prior")
    return _load(path, "prior", {}, EXPECTED_PRIOR).to(device).eval()


def checkpoint_kind(ck: Any, meta: dict | None) -> str | None:
    """"flow" or "prior" for a file `read_checkpoint` read, None when no family knows it."""
    if meta is not None:
        return meta.get("kind")
    family = registry.detect(None, ck)
    return family.kind if family is not None else "prior" if official_spec(ck) is not None else None


def save_prior(prior, path: str | Path, float16: tuple[str, ...] = (), **extra) -> Path:
    """Write a latent module in the project format (weights + config in one file; `float16`:
    see `save_module`)."""
    return save_module(prior, path, "prior", prior.kind, prior.config.to_dict(), extra, float16)
