"""SwinIR (Liang et al. 2021) without an upsampler, as LINF's encoder.

Key names follow the official checkpoints (`conv_first`, `patch_embed.norm`,
`layers.i.residual_group.blocks.j`, `layers.i.conv`, `norm`, `conv_after_body`,
`conv_before_upsample.0`). The Swin blocks are the ones of `swin.py`; unlike FlowSR-LP's
Swin-T generator, SwinIR masks only its shifted blocks and pads the *image*, not each block.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ImageError
from .swin import SwinStage, shifted_window_mask

#: channels of the encoder output (fixed upstream, whatever the embedding width)
OUT_DIM = 64


class SwinIRStage(SwinStage):
    """Blocks alternating unshifted / shifted windows on a map already padded to a window
    multiple. Shifted blocks hold their mask as the `attn_mask` buffer, built for
    `img_size` x `img_size` as in the official state dicts; any other size gets a new one."""

    def __init__(self, dim: int, depth: int, heads: int, ws: int, mlp_ratio: float, img_size: int):
        super().__init__(dim, depth, heads, ws, mlp_ratio)
        self.img_size = img_size
        for block in self.blocks:
            if block.shift:
                block.register_buffer("attn_mask", shifted_window_mask(img_size, img_size, ws, block.shift))

    def forward(self, x):
        h, w = x.shape[1:3]
        rebuilt = None
        for block in self.blocks:
            mask = None
            if block.shift:
                if (h, w) == (self.img_size, self.img_size):
                    mask = block.attn_mask
                else:
                    if rebuilt is None:
                        rebuilt = shifted_window_mask(h, w, self.ws, block.shift, x.device)
                    mask = rebuilt
                mask = mask.to(x.dtype)
            x = block(x, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer block: Swin blocks, a 3x3 conv on the map, + the input.
    Channels-last (B, H, W, C) in and out."""

    def __init__(self, dim: int, depth: int, heads: int, ws: int, mlp_ratio: float, img_size: int):
        super().__init__()
        self.residual_group = SwinIRStage(dim, depth, heads, ws, mlp_ratio, img_size)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x):
        y = self.residual_group(x).permute(0, 3, 1, 2)
        return self.conv(y).permute(0, 2, 3, 1) + x


class SwinIR(nn.Module):
    """conv_first -> LayerNorm -> RSTBs -> LayerNorm -> conv_after_body (+ conv_first's
    output) -> 3x3 conv to 64 channels + LeakyReLU (slope 0.01). The input is
    reflect-padded at the bottom/right to a window multiple and the output is *not*
    cropped (LINF's local part then works on the padded feature grid). No mean
    subtraction. Defaults: the released SwinIR-LINF."""

    def __init__(self, embed_dim: int = 180, depths: Sequence[int] = (6,) * 6, num_heads: Sequence[int] = (6,) * 6,
                 window_size: int = 8, mlp_ratio: float = 2.0, img_size: int = 48):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"SwinIR: {len(depths)} depths but {len(num_heads)} head counts")
        if img_size <= window_size:
            raise ValueError(f"SwinIR: img_size {img_size} must exceed the window size {window_size}")
        self.window_size = window_size
        self.conv_first = nn.Conv2d(3, embed_dim, 3, padding=1)
        self.patch_embed = nn.ModuleDict({"norm": nn.LayerNorm(embed_dim)})
        self.layers = nn.ModuleList([RSTB(embed_dim, d, h, window_size, mlp_ratio, img_size)
                                     for d, h in zip(depths, num_heads)])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, OUT_DIM, 3, padding=1), nn.LeakyReLU(0.01))
        self.out_dim = OUT_DIM

    def forward(self, x):
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.window_size, (-w) % self.window_size
        if ph >= h or pw >= w:  # reflection needs more pixels than it adds
            raise ImageError(f"SwinIR encoder: a {h}x{w} input is too small to pad to a multiple of "
                             f"{self.window_size} (at least {self.window_size // 2 + 1} pixels a side)")
        x = self.conv_first(F.pad(x, (0, pw, 0, ph), mode="reflect"))
        t = self.patch_embed["norm"](x.permute(0, 2, 3, 1))
        for layer in self.layers:
            t = layer(t)
        x = self.conv_after_body(self.norm(t).permute(0, 3, 1, 2)) + x
        return self.conv_before_upsample(x)


#: official `encoder_spec.args` this implementation cannot honour unless they have these values
_FIXED = {"patch_size": 1, "in_chans": 3, "ape": False, "patch_norm": True, "qkv_bias": True,
          "qk_scale": None, "resi_connection": "1conv", "upsampler": "none"}
_SIZES = ("embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "img_size")


def official_args(args: dict) -> dict:
    """`SwinIR` keyword arguments declared by an official `encoder_spec.args` (released
    checkpoints declare none: upstream builds its defaults whatever the args say)."""
    for k, v in _FIXED.items():
        if k in args and args[k] != v and not (k == "upsampler" and args[k] in ("", None)):
            raise ValueError(f"a SwinIR encoder with {k}={args[k]!r} is not supported (LINF uses {v!r})")
    out = {k: args[k] for k in _SIZES if k in args}
    for k in ("depths", "num_heads"):
        if k in out:
            out[k] = [int(n) for n in out[k]]
    return out


def args_from_state_dict(sd: dict) -> dict:
    """The `SwinIR` sizes the encoder's weights (keys without the `encoder.` prefix) imply;
    sizes whose keys are missing are left out (strict loading then names the gap)."""
    out = {}
    if "conv_first.weight" in sd:
        out["embed_dim"] = int(sd["conv_first.weight"].shape[0])
    n_layers = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    blocks = [{k.split(".")[4] for k in sd if k.startswith(f"layers.{i}.residual_group.blocks.")}
              for i in range(n_layers)]
    if n_layers and all(blocks):
        out["depths"] = [len(b) for b in blocks]
    tables = [sd.get(f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table") for i in range(n_layers)]
    if n_layers and all(t is not None for t in tables):
        out["num_heads"] = [int(t.shape[1]) for t in tables]
        out["window_size"] = (math.isqrt(tables[0].shape[0]) + 1) // 2
        fc1 = sd.get("layers.0.residual_group.blocks.0.mlp.fc1.weight")
        if fc1 is not None and fc1.shape[1]:
            out["mlp_ratio"] = fc1.shape[0] / fc1.shape[1]
        mask = next((v for k, v in sd.items() if k.endswith(".attn_mask")), None)
        if mask is not None and math.isqrt(mask.shape[0]) ** 2 == mask.shape[0]:
            out["img_size"] = out["window_size"] * math.isqrt(mask.shape[0])
    return out
