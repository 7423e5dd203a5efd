"""Training recipes: YAML files merged over defaults, with `--set key.path=value` overrides.
See configs/ for the paper's runs and the small CPU recipes."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

DEFAULTS: dict = {
    "name": "",  # a label for logs and exported models
    "task": None,  # "flow" | "prior"
    "stage": "nll",  # flows: "nll" (LINF stage 1, SRFlow) | "finetune" (LINF stage 2) | "interpolate" (no steps);
    #                  priors: "calibrate" (no steps: LINF-LP's BatchNorm statistics per scale) |
    #                  "correlate" (no steps: the residual correlation, prior.config.residual_reach)
    "flow": {},  # {checkpoint: PATH} or {family: linf|linf-patch|srflow, config: {...}}; train: true in a
    #              prior recipe fine-tunes the flow with the module (NLL x loss.nll_weight on alternate steps)
    "prior": {},  # {family: linf-lp|srflow-lp, config: {...}}, or checkpoint: PATH to start from (config: its changes;
    #               specialists_from: [PATH, ...], the weights of its specialists)
    "data": {
        "train": {"folders": [], "repeat": 1, "cache": False},
        "crop": {"kind": "linf"},
        "val": {"folders": [], "scale": 4, "max_images": 4},
    },
    "optim": {"lr": 1e-4, "betas": [0.9, 0.999], "batch_size": 16, "epochs": None, "iterations": None,
              "milestones": [], "milestone_unit": "epoch", "gamma": 0.5, "grad_clip": None,
              "ema": None},  # ema: a decay (e.g. 0.999); validation and the exported model use the weights' average
    "loss": {"perceptual": "vgg", "vgg_weights": None, "latent_weight": 0.0, "pixel_weight": 0.0,
             "pixel_loss": "l1",  # the pixel term of prior recipes: l1, or l2 (mean squared error, PSNR's own)
             "gradient_weight": 0.0, "nll_weight": 5e-4, "scale_weight": 1.0,
             "scale_only": False},  # scale_only: train a latent module's scale head alone (mu frozen)
    "run": {"out": "runs/default", "seed": 0, "workers": 0, "device": "auto", "amp": "none",
            "channels_last": False, "sync_bn": True, "log_every": 10, "val_every": 0, "ckpt_every": 200,
            "threads": None},
}


from ..errors import ConfigError, first_line  # noqa: F401  (ConfigError re-exported)
from .weight_average import check_decay


PIXEL_LOSSES = ("l1", "l2")
FREE_FORM = ("flow", "prior", "data.crop")  # sections whose keys depend on the model / recipe kind


def merge(base: dict, over: dict, where: str = "") -> dict:
    """`over` merged into a copy of `base`; unknown keys of the fixed sections are errors."""
    out = copy.deepcopy(base)
    free = any(where == f or where.startswith(f + ".") for f in FREE_FORM)
    for k, v in (over or {}).items():
        path = f"{where}.{k}" if where else k
        if not free and k not in base:
            raise ConfigError(f"unknown config key {path}")
        out[k] = merge(out[k], v, path) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def set_key(cfg: dict, assignment: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML: numbers, lists, booleans, null)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    node = cfg
    *parents, last = key.strip().split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
    node[last] = _scalar(yaml.safe_load(raw))


def _scalar(v):
    """YAML 1.1 reads `1e-4` (no dot) as a string; take it as the number it means."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


_NUMERIC = {"optim": ("lr", "gamma", "grad_clip", "ema"),
            "loss": ("latent_weight", "pixel_weight", "gradient_weight", "nll_weight", "scale_weight")}


def load_config(path: str | Path, overrides: list[str] = (), task: str | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({first_line(e)})") from None
    over: dict = {}
    for a in overrides:
        set_key(over, a)
    cfg = merge(merge(DEFAULTS, raw), over)
    if task is not None:
        if cfg["task"] not in (None, task):
            raise ConfigError(f"{path} is a {cfg['task']} recipe; use `flowsr-lp train-{cfg['task']}`")
        cfg["task"] = task
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    for section, keys in _NUMERIC.items():
        for k in keys:
            v = _scalar(cfg[section][k])
            if v is not None and not isinstance(v, (int, float)):
                raise ConfigError(f"{section}.{k} must be a number, got {v!r}")
            cfg[section][k] = v
    cfg["optim"]["betas"] = [_scalar(b) for b in cfg["optim"]["betas"]]
    if cfg["task"] not in ("flow", "prior"):
        raise ConfigError("task must be 'flow' or 'prior'")
    if cfg["stage"] == "interpolate":  # a flow stage without steps (train/interpolation.py)
        f = cfg["flow"]
        if cfg["task"] != "flow" or not (f.get("checkpoint") and f.get("toward")) or \
                not isinstance(_scalar(f.get("weight")), (int, float)):
            raise ConfigError("stage: interpolate is a flow recipe's: set flow.checkpoint, flow.toward and "
                              "flow.weight (a number; 0 gives the checkpoint, 1 the other flow)")
        return
    if not cfg["data"]["train"]["folders"]:
        raise ConfigError("data.train.folders is empty: name the folders of HR training images")
    sources = cfg["prior"].get("specialists_from")
    if sources is not None and (cfg["task"] != "prior" or not cfg["prior"].get("checkpoint")
                                or not isinstance(sources, list) or not all(isinstance(p, str) for p in sources)):
        raise ConfigError("prior.specialists_from is a list of checkpoints, one per specialist of the module that "
                          "prior.checkpoint and prior.config.specialists give (train/start.py)")
    if cfg["stage"] == "calibrate":  # a prior stage without steps (train/calibration.py)
        p, n = cfg["prior"], _scalar(cfg["prior"].get("calibration_batches", 25))
        if cfg["task"] != "prior" or not p.get("checkpoint") or not cfg["flow"].get("checkpoint") or \
                not isinstance(n, int) or n < 1:
            raise ConfigError("stage: calibrate is a prior recipe's: set flow.checkpoint, prior.checkpoint (a LINF-LP "
                              "module), prior.config.scale_stats and prior.calibration_batches (a positive integer)")
        return
    if cfg["stage"] == "correlate":  # a prior stage without steps (train/calibration.py)
        p = cfg["prior"]
        n, scale = _scalar(p.get("correlation_images", 60)), _scalar(p.get("correlation_scale", 4))
        if cfg["task"] != "prior" or not p.get("checkpoint") or not cfg["flow"].get("checkpoint") or \
                not isinstance(n, int) or n < 1 or not isinstance(scale, (int, float)) or not scale >= 1:
            raise ConfigError("stage: correlate is a prior recipe's: set flow.checkpoint, prior.checkpoint, "
                              "prior.config.residual_reach, prior.correlation_images (a positive integer) and "
                              "prior.correlation_scale (a scale >= 1)")
        if "correlation_scale" in p and (p.get("config") or {}).get("residual_scales"):
            raise ConfigError("stage: correlate fits a module with prior.config.residual_scales at those scales: "
                              "drop prior.correlation_scale")
        return
    o = cfg["optim"]
    if (o["epochs"] is None) == (o["iterations"] is None):
        raise ConfigError("give exactly one of optim.epochs and optim.iterations")
    if o["ema"] is not None:
        try:
            check_decay(o["ema"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if o["milestone_unit"] not in ("epoch", "iteration", "fraction"):
        raise ConfigError("optim.milestone_unit must be epoch, iteration or fraction")
    if cfg["loss"]["perceptual"] not in ("vgg", "none"):
        raise ConfigError("loss.perceptual must be 'vgg' or 'none'")
    if cfg["loss"]["pixel_loss"] not in PIXEL_LOSSES:
        raise ConfigError(f"loss.pixel_loss must be one of {', '.join(PIXEL_LOSSES)}")
    if cfg["loss"]["pixel_loss"] != "l1" and cfg["task"] != "prior":
        raise ConfigError("loss.pixel_loss is a prior recipe's option (a flow's fine-tune trains on pixel L1)")
    if cfg["loss"]["scale_only"] and cfg["task"] != "prior":
        raise ConfigError("loss.scale_only trains a latent module's scale head: a prior recipe's option")
    if cfg["flow"].get("train") and (cfg["task"] != "prior" or cfg["loss"]["scale_only"]):
        raise ConfigError("flow.train (a joint fine-tune of the flow with its latent module) is an option of prior "
                          "recipes that train the module's mu (not loss.scale_only)")
    if cfg["task"] == "prior":
        if not cfg["flow"].get("checkpoint"):
            raise ConfigError("a prior is trained through a frozen flow: set flow.checkpoint")
        if not cfg["prior"].get("family") and not cfg["prior"].get("checkpoint"):
            raise ConfigError("set prior.family (linf-lp | srflow-lp) and prior.config, or prior.checkpoint")
    elif not cfg["flow"].get("checkpoint") and not cfg["flow"].get("family"):
        raise ConfigError("set flow.family and flow.config for a new flow, or flow.checkpoint to continue one")
    if cfg["stage"] not in ("nll", "finetune"):
        raise ConfigError("stage must be 'nll', 'finetune', 'interpolate' or (prior recipes) 'calibrate' or "
                          "'correlate'")
    if cfg["run"]["amp"] not in ("none", "bf16", "fp16"):
        raise ConfigError("run.amp must be none, bf16 or fp16")
