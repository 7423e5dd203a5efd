"""LPIPS (Zhang et al. 2018) as the SR papers report it: the `lpips` package, AlexNet
backbone, linear layers v0.1, inputs scaled to [-1, 1]. The package ships its linear
layers; the AlexNet ImageNet weights come from torchvision (cache or download) or a file
the user names. Without them we stop with a clear message rather than report a number."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import FlowSRError

ALEXNET_HELP = ("LPIPS needs torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth, from "
                "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth): pass --alexnet-weights PATH, set "
                "FLOWSR_LP_ALEXNET=PATH, or put the file in ~/.cache/torch/hub/checkpoints/; or evaluate with --no-lpips")

_MODELS: dict = {}


class LPIPSUnavailable(FlowSRError, RuntimeError):
    """LPIPS cannot run here (its AlexNet weights are missing): the message says how to get them."""


def _alexnet_state(path: str | Path | None) -> dict:
    path = path or os.environ.get("FLOWSR_LP_ALEXNET")
    if path:
        if not Path(path).is_file():
            raise LPIPSUnavailable(f"{path}: no such file. " + ALEXNET_HELP)
        return torch.load(path, map_location="cpu", weights_only=True)
    from torchvision.models import AlexNet_Weights

    try:
        return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as e:  # offline, proxy, hash mismatch
        raise LPIPSUnavailable(f"{type(e).__name__}: {str(e)[:100]}. " + ALEXNET_HELP) from None


def _load_backbone(net: torch.nn.Module, state: dict, source) -> None:
    """Copy AlexNet's convolutions into LPIPS's slices (which keep torchvision's layer
    indices). Keys may carry torchvision's `features.` prefix or not; every convolution must
    be there with its shape, or the "LPIPS" would run on random features."""
    feats = {k.removeprefix("features."): v for k, v in state.items()}
    missing = []
    for name, conv in net.named_modules():
        if not (name.startswith("slice") and isinstance(conv, torch.nn.Conv2d)):
            continue
        idx = name.rsplit(".", 1)[-1]
        weight, bias = feats.get(f"{idx}.weight"), feats.get(f"{idx}.bias")
        if weight is None or bias is None or weight.shape != conv.weight.shape or bias.shape != conv.bias.shape:
            missing.append(f"features.{idx}")
            continue
        conv.weight.data.copy_(weight)
        conv.bias.data.copy_(bias)
    if missing:
        raise LPIPSUnavailable(f"{source}: AlexNet layer(s) {', '.join(missing)} missing or of another shape "
                               "(not torchvision's AlexNet weights?). " + ALEXNET_HELP)


def lpips_model(device: torch.device | str = "cpu", alexnet_weights: str | Path | None = None,
                spatial: bool = False):
    """The LPIPS(alex, v0.1) network with ImageNet AlexNet features; cached per device, file
    and kind (`spatial`: it returns distance maps; a model of its own, so that threads sharing
    the cache never see another's setting)."""
    key = (str(device), str(alexnet_weights or os.environ.get("FLOWSR_LP_ALEXNET", "")), spatial)
    if key not in _MODELS:
        try:
            import lpips as lpips_pkg
        except ImportError:
            raise LPIPSUnavailable("the `lpips` package is not installed (pip install lpips)") from None
        state = _alexnet_state(alexnet_weights)
        model = lpips_pkg.LPIPS(net="alex", version="0.1", pnet_rand=True, spatial=spatial, verbose=False)  # no download
        _load_backbone(model.net, state, alexnet_weights or os.environ.get("FLOWSR_LP_ALEXNET") or "torchvision")
        _MODELS[key] = model.eval().requires_grad_(False).to(device)
    return _MODELS[key]


@torch.no_grad()
def lpips(sr: torch.Tensor, hr: torch.Tensor, alexnet_weights: str | Path | None = None) -> torch.Tensor:
    """B x 3 x H x W in [0, 1] -> (B,) LPIPS distances (lower is better)."""
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    model = lpips_model(sr.device, alexnet_weights)
    d = model(sr.float().clamp(0, 1) * 2 - 1, hr.float() * 2 - 1)
    return d.flatten().double()


@torch.no_grad()
def lpips_map(sr: torch.Tensor, hr: torch.Tensor, alexnet_weights: str | Path | None = None) -> torch.Tensor:
    """Spatial LPIPS: B x 3 x H x W images in [-1, 1] -> B x 1 x H x W distance maps (the
    per-layer maps upsampled to the image size and summed, as LPIPS(spatial=True))."""
    return lpips_model(sr.device, alexnet_weights, spatial=True)(sr.float(), hr.float())
