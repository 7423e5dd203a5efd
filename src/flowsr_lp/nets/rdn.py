"""RDN (Zhang et al. 2018, residual dense network) without its upsampler, as LINF's encoder.

Key names follow the official checkpoints (`SFENet1`, `RDBs.i.convs.j.conv.0`, `LFF`, `GFF`).
"""
from __future__ import annotations

import torch
from torch import nn

#: upstream's named configurations: (D blocks, C convs per block, G growth)
RDN_CONFIGS = {"A": (20, 6, 32), "B": (16, 8, 64)}


class DenseConv(nn.Module):
    """3x3 conv + ReLU whose output is concatenated after its input."""

    def __init__(self, in_ch: int, growth: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_ch, growth, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x):
        return torch.cat([x, self.conv(x)], 1)


class ResidualDenseBlock(nn.Module):
    """C dense convs, a 1x1 local fusion back to G0 channels, plus the block input."""

    def __init__(self, G0: int, G: int, C: int):
        super().__init__()
        self.convs = nn.Sequential(*[DenseConv(G0 + c * G, G) for c in range(C)])
        self.LFF = nn.Conv2d(G0 + C * G, G0, 1)

    def forward(self, x):
        return self.LFF(self.convs(x)) + x


class RDN(nn.Module):
    """Shallow features -> D residual dense blocks -> global fusion of all block outputs
    (1x1 then kxk) + the first shallow features. Defaults: the released RDN-LINF (config B)."""

    def __init__(self, G0: int = 64, D: int = 16, C: int = 8, G: int = 64, kernel_size: int = 3):
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.SFENet1 = nn.Conv2d(3, G0, kernel_size, padding=pad)
        self.SFENet2 = nn.Conv2d(G0, G0, kernel_size, padding=pad)
        self.RDBs = nn.ModuleList([ResidualDenseBlock(G0, G, C) for _ in range(D)])
        self.GFF = nn.Sequential(nn.Conv2d(D * G0, G0, 1), nn.Conv2d(G0, G0, kernel_size, padding=pad))
        self.out_dim = G0

    def forward(self, x):
        f1 = self.SFENet1(x)
        x = self.SFENet2(f1)
        outs = []
        for block in self.RDBs:
            x = block(x)
            outs.append(x)
        return self.GFF(torch.cat(outs, 1)) + f1


def official_args(args: dict) -> dict:
    """`RDN` keyword arguments declared by an official `encoder_spec.args` (upstream's
    `G0`, `RDNkSize`, `RDNconfig`; reduced checkpoints also name `D`, `C`, `G`)."""
    if args.get("no_upsampling") is False:
        raise ValueError("an RDN encoder with its upsampler (no_upsampling: false) is not a LINF encoder")
    out = {}
    if "RDNconfig" in args:
        if args["RDNconfig"] not in RDN_CONFIGS:
            raise ValueError(f"unknown RDNconfig {args['RDNconfig']!r} (expected 'A' or 'B')")
        out.update(zip("DCG", RDN_CONFIGS[args["RDNconfig"]]))
    out.update({k: int(args[k]) for k in ("G0", "D", "C", "G") if k in args})
    if "RDNkSize" in args:
        out["kernel_size"] = int(args["RDNkSize"])
    return out


def args_from_state_dict(sd: dict) -> dict:
    """The `RDN` sizes the encoder's weights (keys without the `encoder.` prefix) imply;
    sizes whose keys are missing are left out (strict loading then names the gap)."""
    out = {}
    if "SFENet1.weight" in sd:
        out["G0"], out["kernel_size"] = sd["SFENet1.weight"].shape[0], sd["SFENet1.weight"].shape[-1]
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("RDBs.")}
    if blocks:
        out["D"] = max(blocks) + 1
        convs = {int(k.split(".")[3]) for k in sd if k.startswith("RDBs.0.convs.")}
        if convs:
            out["C"] = max(convs) + 1
    if "RDBs.0.convs.0.conv.0.weight" in sd:
        out["G"] = sd["RDBs.0.convs.0.conv.0.weight"].shape[0]
    return {k: int(v) for k, v in out.items()}
