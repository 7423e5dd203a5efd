"""Swin Transformer stages at full resolution (no patch merging), as FlowSR-LP's Swin-T
latent generator uses them. Tensors are channels-last (B, H, W, C) inside."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws * ws, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_merge(x: torch.Tensor, ws: int, b: int, h: int, w: int) -> torch.Tensor:
    x = x.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def relative_position_index(ws: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int, device=None) -> torch.Tensor:
    """(nW, ws*ws, ws*ws) additive mask: -100 between tokens of different regions of the
    (padded) map once it is rolled by `shift`."""
    label = torch.zeros(1, h, w, 1, device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    n = 0
    for hs in cuts:
        for wsl in cuts:
            label[:, hs, wsl, :] = n
            n += 1
    win = window_partition(label, ws).squeeze(-1)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int):
        super().__init__()
        self.heads, self.ws = heads, ws
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(bw, self.heads, n, n)
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int, shift: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, ws)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, mask):
        b, h, w, c = x.shape
        ws = self.ws
        y = self.norm1(x)
        if h % ws or w % ws:  # zero-pad after the norm (F.pad copies even when there is nothing to add)
            y = F.pad(y, (0, 0, 0, (-w) % ws, 0, (-h) % ws))
        hp, wp = y.shape[1:3]
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = window_merge(self.attn(window_partition(y, ws), mask), ws, b, hp, wp)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y[:, :h, :w]
        return x + self.mlp(self.norm2(x))


class SwinStage(nn.Module):
    """Blocks alternating unshifted / shifted windows. The shifted-window mask is built once
    per stage and given to every block, the unshifted ones too: FlowSR-LP's weights were
    trained that way, so the quirk is kept."""

    def __init__(self, dim: int, depth: int, heads: int, ws: int = 7, mlp_ratio: float = 4.0):
        super().__init__()
        self.ws = ws
        self.blocks = nn.ModuleList([SwinBlock(dim, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio)
                                     for i in range(depth)])

    def forward(self, x):
        h, w = x.shape[1:3]
        ws = self.ws
        mask = shifted_window_mask(h + (-h) % ws, w + (-w) % ws, ws, ws // 2, x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x
