"""A flow stage without steps: weight-space interpolation between a flow and its fine-tune
(WiSE-FT, Wortsman et al., CVPR 2022), theta = (1 - weight) * theta_a + weight * theta_b. Between
an NLL-trained flow (a density) and its L1 fine-tune (a good conditional mean at tau 0) it
sets how much of the fine-tune's tau-0 fidelity the flow keeps, and so how much is left for a
latent module to add. Recipe: `stage: interpolate`, `flow: {checkpoint: A, toward: B, weight: w}`."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..checkpoints import CheckpointError, load_flow, save_flow
from ..errors import TrainingError
from ..pipeline import SuperResolver
from .trainer import export_run, validate_once, write_run_config


def interpolated(a: torch.nn.Module, b: torch.nn.Module, weight: float) -> torch.nn.Module:
    """`a` with every floating-point weight and buffer moved `weight` of the way to `b`'s
    (computed in float64); integer buffers are `a`'s. The two must share config and keys."""
    if type(a) is not type(b) or a.config != b.config:
        raise ValueError(f"interpolation needs two flows of one architecture: {a.config} and {b.config}")
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError("interpolation needs two flows with the same weights' names and shapes")
    a.load_state_dict({k: ((1 - weight) * v.double() + weight * sb[k].double()).to(v.dtype) if v.is_floating_point()
                       else v for k, v in sa.items()})
    return a


def run_interpolation(cfg: dict, device: torch.device) -> Path:
    """The stage's run folder as a training run's: config.yaml, val.csv (one validation),
    model.safetensors with its record, summary.json (0 steps)."""
    spec, out = cfg["flow"], Path(cfg["run"]["out"])
    t0, w = time.perf_counter(), float(spec["weight"])
    try:
        flow = interpolated(load_flow(spec["checkpoint"], device=device), load_flow(spec["toward"], device=device), w)
    except (CheckpointError, ValueError, TypeError) as e:
        raise TrainingError(f"flow: {e}") from None
    label = f"weight interpolation: {1 - w:g} x {spec['checkpoint']} + {w:g} x {spec['toward']}"
    write_run_config(out, cfg, label)
    validate_once(out, cfg, device, SuperResolver(flow.eval()))
    return export_run(out, save_flow, flow, cfg, label, 0, time.perf_counter() - t0, 0)
