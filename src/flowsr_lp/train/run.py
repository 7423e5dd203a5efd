"""Assemble a training run from a recipe: models, objective, perceptual loss, trainer."""
from __future__ import annotations

import gc
import logging
from pathlib import Path

import torch

from ..checkpoints import CheckpointError, build_model, load_flow, save_flow, save_prior
from ..flows.layers import ActNorm
from ..nets.vgg import PerceptualLoss, VGGWeightsMissing, load_vgg_state
from ..pipeline import SuperResolver, check_prior_fits
from .calibration import run_calibration
from .interpolation import run_interpolation
from .objectives import FlowNLL, LINFFinetune, PriorObjective
from .start import start_prior
from ..distributed import finish, setup_distributed
from .trainer import Trainer, TrainingError, check_out_folder

logger = logging.getLogger(__name__)


@torch.no_grad()
def init_actnorms(flow, batch: dict) -> None:
    """Glow's data-dependent ActNorm initialisation, for flows trained from scratch only."""
    hooks = [m.register_forward_pre_hook(lambda m, args: m.initialize(args[0]))
             for m in flow.modules() if isinstance(m, ActNorm)]
    try:
        hr = batch["hr"]
        flow.encode(hr, flow.condition(batch["lr"], tuple(hr.shape[-2:])))
    finally:
        for h in hooks:
            h.remove()


class JointModules(torch.nn.Module):
    """A latent module and its flow trained together (`flow.train` in a prior recipe)."""

    def __init__(self, prior, flow):
        super().__init__()
        self.prior, self.flow = prior, flow


def save_joint(model: JointModules, path: Path, **extra) -> Path:
    """The module to `path` (model.safetensors), its flow beside it as flow.safetensors."""
    save_flow(model.flow, Path(path).with_name("flow.safetensors"), **extra)
    return save_prior(model.prior, path, **extra)


def _perceptual(cfg: dict, needed: bool):
    """(module or None, label recorded in logs and checkpoints)."""
    loss = cfg["loss"]
    if not needed:
        return None, "none (likelihood only)"
    if loss["perceptual"] == "none":
        if cfg["task"] == "flow":
            return None, "none (pixel L1 only)"
        grad = f" + gradient L1 x{loss['gradient_weight']:g}" if loss["gradient_weight"] else ""
        return None, f"none (pixel {loss['pixel_loss'].upper()} x{loss['pixel_weight']:g} + latent L1 x{loss['latent_weight']:g}{grad})"
    try:
        return PerceptualLoss(load_vgg_state(loss["vgg_weights"])), "vgg19-imagenet"
    except VGGWeightsMissing as e:
        raise TrainingError(str(e)) from None


def default_loss_weights(cfg: dict) -> str | None:
    """`--perceptual none` with no pixel weight would train on nothing but the latent L1:
    use pixel L1 x1 (+ latent L1 x0.1) and record the change in the config (saved with the
    run as `loss_weights_changed`); returns what changed, for the log."""
    loss = cfg["loss"]
    if cfg["task"] != "prior" or loss["perceptual"] != "none" or loss["pixel_weight"] != 0 or loss["scale_only"]:
        return None
    changed = {"pixel_weight": (loss["pixel_weight"], 1.0),
               "latent_weight": (loss["latent_weight"], loss["latent_weight"] or 0.1)}
    loss["pixel_weight"], loss["latent_weight"] = changed["pixel_weight"][1], changed["latent_weight"][1]
    what = ", ".join(f"loss.{k} {a:g} -> {b:g}" for k, (a, b) in changed.items() if a != b)
    cfg["loss_weights_changed"] = f"{what} (loss.perceptual none trains on pixel L1 + latent L1)"
    return cfg["loss_weights_changed"]


def train(cfg: dict, resume: bool = False, overwrite: bool = False) -> None:
    run = cfg["run"]
    if run["threads"]:
        torch.set_num_threads(int(run["threads"]))
    rank, world, device = setup_distributed(run["device"])
    check_out_folder(Path(run["out"]), resume, overwrite)  # before any work
    if cfg["stage"] in ("interpolate", "calibrate", "correlate"):  # stages without steps
        if rank == 0:
            stage = run_interpolation if cfg["stage"] == "interpolate" else run_calibration
            logger.info("model written to %s", stage(cfg, device))
        finish(world)
        return
    torch.manual_seed(run["seed"])
    flow_spec, prior_spec, loss = cfg["flow"], cfg["prior"], cfg["loss"]
    changed = default_loss_weights(cfg)
    if changed and rank == 0:
        logger.warning("loss weights changed: %s", changed)
    needs_vgg = (cfg["task"] == "prior" and not loss["scale_only"]) or cfg["stage"] == "finetune"
    percep, label = _perceptual(cfg, needs_vgg)
    try:
        if flow_spec.get("checkpoint"):
            flow = load_flow(flow_spec["checkpoint"], device=device, taps=flow_spec.get("taps"))
        else:
            flow = build_model("flow", flow_spec["family"], flow_spec.get("config", {})).to(device)
    except (CheckpointError, ValueError, TypeError) as e:
        raise TrainingError(f"flow: {e}") from None
    if cfg["task"] == "flow":
        flow.train()
        objective = FlowNLL(flow) if cfg["stage"] == "nll" else LINFFinetune(flow, percep, loss["nll_weight"])
        model, export = flow, save_flow
        resolver = lambda: SuperResolver(flow)  # noqa: E731 - validated at tau 0
    else:
        try:
            prior = (start_prior(prior_spec, device) if prior_spec.get("checkpoint")
                     else build_model("prior", prior_spec["family"], prior_spec.get("config", {})).to(device))
            check_prior_fits(flow, prior)
        except (CheckpointError, ValueError, TypeError) as e:
            raise TrainingError(f"prior: {e}") from None
        if run["channels_last"] and device.type == "cuda":
            prior = prior.to(memory_format=torch.channels_last)
        prior.train()
        joint = bool(flow_spec.get("train"))
        objective = PriorObjective(flow, prior, percep, loss["latent_weight"], loss["pixel_weight"], run["amp"],
                                   loss["gradient_weight"], loss["scale_weight"], loss["scale_only"],
                                   loss["nll_weight"] if joint else None, loss["pixel_loss"])
        model, export = (JointModules(prior, flow), save_joint) if joint else (prior, save_prior)
        if joint:
            label += f"; flow trained too, NLL x{loss['nll_weight']:g} on alternate steps"
        resolver = lambda: SuperResolver(flow, prior)  # noqa: E731
    trainer = Trainer(cfg, model, objective, export, resolver, label=label, rank=rank, world=world,
                      device=device, resume=resume)
    if cfg["task"] == "flow" and not flow_spec.get("checkpoint") and trainer.step == 0 and \
            any(isinstance(m, ActNorm) for m in flow.modules()):
        init_actnorms(flow, {k: v.to(device) if torch.is_tensor(v) else v for k, v in trainer.batches[0].items()})
        if world > 1:  # every rank starts from rank 0's initialisation
            for p in flow.parameters():
                torch.distributed.broadcast(p.data, 0)
    if rank == 0:
        logger.info("training %s for %d iterations (%d per epoch), %.2f M trainable parameters, perceptual loss: "
                    "%s, device %s, %d process(es)", cfg["task"], trainer.total, trainer.per_epoch,
                    sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, label, device, world)
    path = trainer.run()
    if rank == 0:
        logger.info("model written to %s", path)
    # the trainer's DistributedDataParallel holds the process group: release it while the
    # interpreter is whole, so the group's threads are not joined during finalisation
    del trainer, objective
    gc.collect()
    finish(world)


