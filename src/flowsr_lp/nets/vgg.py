"""VGG19 `features[:35]` (conv5_4 before its ReLU) with ImageNet normalisation: the
perceptual loss of LINF fine-tuning and FlowSR-LP. The ImageNet weights come from a file
the user names, torchvision's cache, or a download; never silently from nowhere."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import FlowSRError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_HELP = ("VGG19 ImageNet weights are not available (no network?). Pass --vgg-weights PATH to "
                "torchvision's vgg19-dcbb9e9d.pth (download https://download.pytorch.org/models/vgg19-dcbb9e9d.pth "
                "elsewhere, or copy ~/.cache/torch/hub/checkpoints/ from a machine that has it), or train without "
                "it with --perceptual none (pixel L1 + latent L1).")


class VGGWeightsMissing(FlowSRError, RuntimeError):
    """VGG19's ImageNet weights are not available: the message says how to get them."""


def _vgg19_features():
    from torchvision.models import vgg19

    return vgg19(weights=None).features[:35]


def load_vgg_state(path: str | Path | None) -> dict:
    """features.* state dict from `path`, or torchvision's ImageNet weights (cache/download)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise VGGWeightsMissing(f"{path}: no such file. " + WEIGHTS_HELP)
        sd = torch.load(path, map_location="cpu", weights_only=True)
    else:
        from torchvision.models import VGG19_Weights

        try:
            sd = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as e:  # URLError, timeout, hash mismatch ...
            raise VGGWeightsMissing(f"{type(e).__name__}: {str(e)[:120]}. " + WEIGHTS_HELP) from None
    return sd


class VGGFeatures(nn.Module):
    """Frozen feature extractor; input images in [0, 1]."""

    def __init__(self, state_dict: dict):
        """`state_dict`: a whole torchvision VGG19's (`features.N.*` keys) or its features'."""
        super().__init__()
        if any(k.startswith("features.") for k in state_dict):
            state_dict = {k[len("features."):]: v for k, v in state_dict.items() if k.startswith("features.")}
        self.features = _vgg19_features()
        own = self.features.state_dict()
        self.features.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always in eval mode
        return super().train(False)

    def forward(self, x):
        return self.features((x - self.mean) / self.std)


class PerceptualLoss(nn.Module):
    """L1 between VGG19 features of the SR (clamped to [0, 1]) and of the HR."""

    def __init__(self, state_dict: dict):
        super().__init__()
        self.vgg = VGGFeatures(state_dict)

    def forward(self, sr, hr):
        return (self.vgg(sr.clamp(0, 1)) - self.vgg(hr)).abs().mean()
