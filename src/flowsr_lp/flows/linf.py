"""LINF: Local Implicit Normalizing Flow (Yao et al., CVPR 2023), 1x1 and 3x3-patch variants.

A query at an HR coordinate gets a conditioning vector from the LR features around it
(local implicit Fourier features -> MLP); given that vector the flow is an affine map of
the residual `m = hr - bilinear_up(lr)` (of one pixel, or of a 3x3 patch), so p(m | c) is
an exact Gaussian. Values live in the [-1, 1] space inside the model; images cross the
public interface in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..model_config import ModelConfig
from ..nets.edsr import EDSRBaseline
from ..nets.rdn import RDN
from ..nets.rrdb import RRDBNet
from ..nets.swinir import SwinIR
from ..precision import compute_dtype, float32_transform, full_precision
from .base import Flow, Latent, checked_size
from .layers import InvertibleLayer, InvertibleLinear, chain, chain_inverse, derive_once, gaussian_log_p


@dataclass
class LINFConfig(ModelConfig):
    encoder: str = "edsr-baseline"  # one of ENCODERS
    encoder_args: dict = field(default_factory=dict)  # keyword arguments of the encoder class
    patch_size: int = 1  # 1 (`linf`) or 3 (`linf-patch`)
    flow_layers: int = 10
    num_layer: int = 3
    hidden_dim: int = 256


#: LINF's encoders by their official names; each has an `out_dim` attribute
ENCODERS = {"edsr-baseline": EDSRBaseline, "rrdb": RRDBNet, "rdn": RDN, "swinir": SwinIR}


def build_encoder(name: str, args: dict) -> nn.Module:
    if name not in ENCODERS:
        raise ValueError(f"unknown LINF encoder {name!r} (expected one of {sorted(ENCODERS)})")
    return ENCODERS[name](**args)


def pixel_centres(n: int, count: int | None = None) -> torch.Tensor:
    """Centres of n pixels on (-1, 1), in float32 exactly as LINF computes them (the same
    float operations matter: at integer scales neighbour offsets land on cell borders).
    `count > n` extrapolates past the border with the same spacing."""
    r = 1 / n
    return -1 + r + (2 * r) * torch.arange(n if count is None else count).float()


def coord_grid(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(len(rows), len(cols), 2) grid; [..., 0] is the row coordinate."""
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)


def to_patches(m: torch.Tensor, ps: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """B x 3 x H x W -> B x 3ps^2 x h x w, zero-padding bottom/right; colour-major."""
    if ps == 1:
        return m
    b, c, H, W = m.shape
    h, w = grid_hw
    m = F.pad(m, (0, w * ps - W, 0, h * ps - H))
    m = m.view(b, c, h, ps, w, ps).permute(0, 1, 3, 5, 2, 4)
    return m.reshape(b, c * ps * ps, h, w)


def from_patches(p: torch.Tensor, ps: int) -> torch.Tensor:
    """Inverse of `to_patches` before cropping: B x 3ps^2 x h x w -> B x 3 x h*ps x w*ps."""
    if ps == 1:
        return p
    b, _, h, w = p.shape
    p = p.view(b, 3, ps, ps, h, w).permute(0, 1, 4, 2, 5, 3)
    return p.reshape(b, 3, h * ps, w * ps)


class ConditionalAffine(InvertibleLayer):
    """x * scale + shift elementwise, from the condition's `index`-th (scale, shift) pair:
    cond (N, L, 2, D), scale = sigmoid(s + 2) + 1e-4. No parameters of its own."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def _params(self, cond: torch.Tensor):
        s, shift = cond[:, self.index, 0], cond[:, self.index, 1]
        return torch.sigmoid(s + 2.0) + 1e-4, shift

    def forward(self, x, cond=None):
        scale, shift = self._params(cond)
        return x * scale + shift, torch.log(scale).sum(-1)

    def inverse(self, y, cond=None):
        scale, shift = self._params(cond)
        return (y - shift) / scale, -torch.log(scale).sum(-1)

    # not `apply`: that would shadow nn.Module.apply(fn), which recurses into every submodule
    def transform(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """`forward` without the log-det."""
        scale, shift = self._params(cond)
        return x * scale + shift

    def invert(self, y: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """`inverse` without the log-det."""
        scale, shift = self._params(cond)
        return (y - shift) / scale


class AffineFlow(InvertibleLayer):
    """LINF's flow on D-vectors: L x [invertible linear, conditional elementwise affine],
    then a last linear; cond (N, L, 2, D) holds the affine parameters. Key names as in
    LINF's checkpoints (`linears.i`, `last`)."""

    def __init__(self, dim: int, n_layers: int):
        super().__init__()
        self.linears = nn.ModuleList([InvertibleLinear(dim) for _ in range(n_layers)])
        self.affines = nn.ModuleList([ConditionalAffine(i) for i in range(n_layers)])
        self.last = InvertibleLinear(dim)

    def steps(self) -> list[InvertibleLayer]:
        return [m for pair in zip(self.linears, self.affines) for m in pair] + [self.last]

    @float32_transform
    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        """x (N, D) -> (z (N, D), log-det (N,))."""
        return chain(self.steps(), x, cond, x.new_zeros(x.shape[0]))

    @float32_transform
    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None):
        """z (N, D) -> (x (N, D), log-det (N,)); the linears' inverses are cached."""
        return chain_inverse(self.steps(), z, cond, z.new_zeros(z.shape[0]))

    @float32_transform
    def transform(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """`forward` without the log-det, which FlowSR-LP's initial prior does not need."""
        for lin, affine in zip(self.linears, self.affines):
            x = affine.transform(lin.transform(x), cond)
        return self.last.transform(x)

    @float32_transform
    def invert(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """`inverse` without the log-det, which decoding does not need (the log of every
        scale would be about a fifth of LINF's decode time)."""
        x = self.last.invert(z)
        for lin, affine in zip(reversed(self.linears), reversed(self.affines)):
            x = lin.invert(affine.invert(x, cond))
        return x


@dataclass
class AxisLookup:
    """For one axis and one neighbour offset: which LR cell each query reads, and the
    query's offset from that cell's centre in LR-cell units. Nearest-cell lookup is
    separable (rows and columns are unnormalised independently), so two short vectors
    replace a 2-D `grid_sample` over the whole query grid."""

    index: torch.Tensor  # (n_queries_on_axis,) long
    rel: torch.Tensor  # (n_queries_on_axis,) float


@dataclass
class LINFContext:
    inp: torch.Tensor  # normalised LR, B x 3 x h x w
    out_size: tuple[int, int]  # unpadded size of the HR region decoded (the window, or the image)
    lr_maps: torch.Tensor  # cat(coef, freq) channels-last, B x h x w x 2hd
    phase: torch.Tensor  # phase(cell * [h, w]), B x hd/2
    coord: torch.Tensor  # query coordinates, hq x wq x 2
    rows: list[AxisLookup]  # per row offset (-1, +1)
    cols: list[AxisLookup]  # per column offset (-1, +1)
    cond: torch.Tensor | None = None  # cached MLP output, B x hq x wq x 2DL
    full_size: tuple[int, int] | None = None  # the whole HR image (differs from out_size for a window)
    offset: tuple[int, int] = (0, 0)  # top-left of the window in the HR image

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """The window's part of a full-size HR map."""
        (t, l), (h, w) = self.offset, self.out_size
        return x[..., t : t + h, l : l + w]

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.coord.shape[:2])


def axis_lookups(q: torch.Tensor, n: int) -> list[AxisLookup]:
    """Neighbour lookups along one axis of n LR cells for query coordinates q, with the
    same float operations (shift, clamp, nearest `grid_sample`) as LINF's 2-D lookup."""
    centres = pixel_centres(n).to(q)
    table = torch.stack([torch.arange(n).to(q), centres]).view(1, 2, n, 1)
    out = []
    for v in (-1, 1):
        shifted = (q + (v / n + 1e-6)).clamp_(-1 + 1e-6, 1 - 1e-6)
        grid = torch.stack([torch.zeros_like(shifted), shifted], -1).view(1, -1, 1, 2)
        idx, centre = F.grid_sample(table, grid, mode="nearest", align_corners=False).view(2, -1)
        out.append(AxisLookup(idx.long(), (q - centre) * n))
    return out


class LINF(Flow):
    """`patch_size` 1 is LINF's per-pixel model, 3 the 3x3-patch model FlowSR-LP uses."""

    #: the flow models 2x - 1 (images in [-1, 1])
    internal_log_scale = math.log(2.0)
    #: queries per chunk when evaluating the conditioning network (bounds memory)
    chunk_queries: int = 8192
    #: the conditioning of a whole query grid is kept in the context below this size
    cache_bytes: int = 1 << 30

    def __init__(self, config: LINFConfig | None = None):
        super().__init__()
        self.config = config = config or LINFConfig()
        self.kind = "linf" if config.patch_size == 1 else "linf-patch"
        self.encoder = build_encoder(config.encoder, config.encoder_args)
        c, hd = self.encoder.out_dim, config.hidden_dim
        self.dim = 3 * config.patch_size**2
        self.coef = nn.Conv2d(c, hd, 3, padding=1)
        self.freq = nn.Conv2d(c, hd, 3, padding=1)
        self.phase = nn.Linear(2, hd // 2, bias=False)
        layers: list[nn.Module] = [nn.Conv2d(4 * hd, hd, 1), nn.ReLU()]
        for _ in range(config.num_layer - 1):
            layers += [nn.Conv2d(hd, hd, 1), nn.ReLU()]
        layers.append(nn.Conv2d(hd, 2 * self.dim * config.flow_layers, 1))
        self.layers = nn.Sequential(*layers)
        self.imnet = AffineFlow(self.dim, config.flow_layers)

    @property
    def latent_channels(self) -> tuple[int, ...]:
        return (self.dim,)

    def nll(self, log_p: torch.Tensor, ctx: LINFContext) -> torch.Tensor:
        """Nats per query (LINF's training loss)."""
        hq, wq = ctx.grid_size
        return -log_p / (hq * wq)

    def density_context(self, lr: torch.Tensor, out_size: tuple[int, int]):
        """Patches overhanging the border model padding, not image: the exact density is that
        of the top-left region whose sides are multiples of the patch size (the whole image
        for the 1x1 flow), conditioned on the whole LR."""
        H, W = checked_size(out_size)
        ps = self.config.patch_size
        h, w = H - H % ps, W - W % ps
        if h == 0 or w == 0:
            raise ValueError(f"a {H}x{W} output holds no whole {ps}x{ps} patch")
        return lr, self.condition(lr, (H, W), window=(0, 0, h, w) if (h, w) != (H, W) else None), (h, w)

    def default_tau(self, scale: float) -> float:
        # LINF's recommended temperatures: 0.5 up to x4, 0.4 at x6, 0.2 at x8
        return 0.5 if scale <= 4 else 0.4 if scale <= 6 else 0.2

    # ---- conditioning ------------------------------------------------------------------
    def query_coords(self, full_size: tuple[int, int], window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Query coordinates (pixel or patch centres) of a window (top, left, h, w) of an
        HR image of `full_size`; patches overhanging the image get extrapolated centres."""
        H, W = full_size
        top, left, h, w = window or (0, 0, H, W)
        ps, c = self.config.patch_size, self.config.patch_size // 2
        hq, wq = -(-h // ps), -(-w // ps)
        rows = pixel_centres(H, top + hq * ps)[top + c :: ps]
        cols = pixel_centres(W, left + wq * ps)[left + c :: ps]
        return coord_grid(rows, cols)

    def condition(self, lr: torch.Tensor, out_size: tuple[int, int],
                  window: tuple[int, int, int, int] | None = None) -> LINFContext:
        """`window` = (top, left, h, w) restricts the queries to part of the HR image (as in
        FlowSR-LP's training crops); decode then returns that part only."""
        lr = self.checked_images(lr, "lr")
        H, W = checked_size(out_size)
        top, left, h_out, w_out = window or (0, 0, H, W)
        if top < 0 or left < 0 or h_out < 1 or w_out < 1 or top + h_out > H or left + w_out > W:
            raise ValueError(f"window {window} does not fit an output of {(H, W)}")
        inp = (lr - 0.5) / 0.5
        # channels-last (NHWC) input: oneDNN convolves without reordering
        feat = self.encoder(inp.contiguous(memory_format=torch.channels_last))
        # the local part runs on the feature grid, which SwinIR pads to a window multiple
        # (not cropped upstream); coord / cell and the bilinear base keep the unpadded sizes
        b, _, h, w = feat.shape
        # kept in the convolutions' dtype (bf16 under autocast): the gather copies half the
        # bytes, and the Fourier features below still compute in float32 (type promotion)
        lr_maps = torch.cat([self.coef(feat), self.freq(feat)], 1).permute(0, 2, 3, 1).contiguous()
        cell = torch.tensor([2 / H, 2 / W], device=feat.device)
        with full_precision(feat.device):
            phase = self.phase((cell * torch.tensor([h, w]).to(cell)).expand(b, 2))
        coord = self.query_coords((H, W), window).to(cell)
        ctx = LINFContext(inp, (h_out, w_out), lr_maps, phase, coord,
                          axis_lookups(coord[:, 0, 0], h), axis_lookups(coord[0, :, 1], w),
                          full_size=(H, W), offset=(top, left))
        hq, wq = ctx.grid_size
        cond_bytes = b * hq * wq * 2 * self.dim * self.config.flow_layers * cell.element_size()
        if cond_bytes <= self.cache_bytes:
            ctx.cond = torch.cat([self._cond_rows(ctx, r0, r1) for r0, r1 in self._chunks(ctx)], 1)
        return ctx

    def _chunks(self, ctx: LINFContext):
        hq, wq = ctx.grid_size
        step = max(1, self.chunk_queries // (wq * ctx.inp.shape[0]))
        return [(r0, min(r0 + step, hq)) for r0 in range(0, hq, step)]

    def _cond_rows(self, ctx: LINFContext, r0: int, r1: int) -> torch.Tensor:
        """Condition vectors for query rows [r0, r1): B x rows x wq x 2DL (channels last)."""
        if ctx.cond is not None:
            return ctx.cond[:, r0:r1]
        hd = self.config.hidden_dim
        b, wq = ctx.inp.shape[0], ctx.grid_size[1]
        phase = ctx.phase[:, None, None, :]
        h, w, c = ctx.lr_maps.shape[1:]
        # one table of all batch items' LR cells: a row gather along its first dimension
        table = ctx.lr_maps.view(b * h * w, c)
        first = torch.arange(0, b * h * w, h * w, device=table.device)[:, None]
        # without autograd, the features are written in place into one buffer (no concat
        # copy), in the dtype the first layer runs in (autocast would cast a float32 buffer)
        inplace = not (torch.is_grad_enabled() and ctx.lr_maps.requires_grad)
        feats = phase.new_empty(b, r1 - r0, wq, 4 * hd, dtype=compute_dtype(phase)) if inplace else []
        rel_rows = [r.rel[r0:r1, None, None] for r in ctx.rows]
        rel_cols = [c.rel[None, :, None] for c in ctx.cols]
        areas = [(rr * rc).abs() + 1e-9 for rr in rel_rows for rc in rel_cols]
        total = areas[0] + areas[1] + areas[2] + areas[3]
        k = 0
        for i, row in enumerate(ctx.rows):
            for j, col in enumerate(ctx.cols):
                # one gather over the flattened LR map fetches this neighbour of every query
                cells = (first + (row.index[r0:r1, None] * w + col.index[None, :]).flatten()).flatten()
                q = table.index_select(0, cells).view(b, r1 - r0, wq, c)
                q_coef, f_row, f_col = q[..., :hd], q[..., hd : hd + hd // 2], q[..., hd + hd // 2 :]
                # one fused expression, not in-place chains on the strided feature slices
                # (slower: benchmarks/README.md, "Why the code is as it is")
                g = math.pi * (f_row * rel_rows[i] + f_col * rel_cols[j] + phase)
                # each neighbour is weighted by the area of the diagonally opposite rectangle
                cw = q_coef * (areas[3 - k // hd] / total)
                if inplace:
                    torch.mul(torch.cos(g), cw[..., : hd // 2], out=feats[..., k : k + hd // 2])
                    torch.mul(torch.sin(g), cw[..., hd // 2 :], out=feats[..., k + hd // 2 : k + hd])
                else:
                    feats += [torch.cos(g) * cw[..., : hd // 2], torch.sin(g) * cw[..., hd // 2 :]]
                k += hd
        if not inplace:
            feats = torch.cat(feats, -1)
        x = feats
        *hidden, last = self.layers
        for layer in hidden:
            if isinstance(layer, nn.Conv2d):  # 1x1 convs in the checkpoint, linears here
                x = F.linear(x, layer.weight.flatten(1), layer.bias)
            else:
                x = F.relu(x, inplace=inplace)
        return self._affine_params(x, last.weight.flatten(1), last.bias)

    def _affine_params(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The MLP's last layer: the flow's affine parameters, (..., L x (scale, shift) x D),
        float32. Under autocast it runs in the reduced dtype, except the shifts of the last
        `FLOAT32_SHIFTS` layers, which decoding undoes first (their rounding passes through
        every later inverse): those are recomputed in float32. All in bf16, random-weight
        outputs were up to 2.2/255 from fp32; so, up to 1.5/255."""
        out = F.linear(x, w, b).float()
        if x.dtype == torch.float32:
            return out
        n, d = self.config.flow_layers, self.dim
        k = min(FLOAT32_SHIFTS, n)
        with full_precision(x.device):
            shifts = F.linear(x.float(), w.view(n, 2, d, -1)[n - k :, 1].flatten(0, 1),
                              b.view(n, 2, d)[n - k :, 1].flatten())
        out.view(*out.shape[:-1], n, 2, d)[..., n - k :, 1, :] = shifts.unflatten(-1, (k, d))
        return out

    # ---- residual <-> latent --------------------------------------------------------------
    def _bilinear_base(self, ctx: LINFContext) -> torch.Tensor:
        if self.config.patch_size == 1:
            grid = ctx.coord.unsqueeze(0).expand(ctx.inp.shape[0], -1, -1, -1).flip(-1)
            return F.grid_sample(ctx.inp, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return ctx.crop(F.interpolate(ctx.inp, ctx.full_size, mode="bilinear", align_corners=False))

    def _cond_view(self, cond: torch.Tensor) -> torch.Tensor:
        return cond.reshape(-1, self.config.flow_layers, 2, self.dim)

    def encode_patches(self, patches: torch.Tensor, ctx: LINFContext, log_p: bool = True):
        """Residual patches (B x D x hq x wq, [-1, 1] space) -> (z map, per-query log p, or
        None with `log_p=False`)."""
        zs, log_ps = [], []
        for r0, r1 in self._chunks(ctx):
            x = patches[:, :, r0:r1].permute(0, 2, 3, 1)
            shape = x.shape
            cond = self._cond_view(self._cond_rows(ctx, r0, r1))
            if log_p:
                z, logdet = self.imnet(x.reshape(-1, self.dim), cond)
                log_ps.append((logdet + gaussian_log_p(z)).view(shape[:3]))
            else:
                z = self.imnet.transform(x.reshape(-1, self.dim), cond)
            zs.append(z.view(shape).permute(0, 3, 1, 2))
        return torch.cat(zs, 2), torch.cat(log_ps, 1) if log_p else None

    def decode_patches(self, z: torch.Tensor, ctx: LINFContext) -> torch.Tensor:
        """Latent map -> residual patches (B x D x hq x wq, [-1, 1] space)."""
        out = []
        with derive_once(self.imnet):  # in training too, each float64 inverse once, not per chunk
            for r0, r1 in self._chunks(ctx):
                x = z[:, :, r0:r1].permute(0, 2, 3, 1)
                shape = x.shape
                m = self.imnet.invert(x.reshape(-1, self.dim), self._cond_view(self._cond_rows(ctx, r0, r1)))
                out.append(m.view(shape).permute(0, 3, 1, 2))
        return torch.cat(out, 2)

    def decode_residual(self, latent: Latent, ctx: LINFContext) -> torch.Tensor:
        """Folded residual before cropping, [-1, 1] space."""
        return from_patches(self.decode_patches(latent[0], ctx), self.config.patch_size)

    # ---- the flow interface -----------------------------------------------------------
    def latent_shapes(self, ctx: LINFContext) -> list[tuple[int, ...]]:
        return [(ctx.inp.shape[0], self.dim, *ctx.grid_size)]

    def encode(self, hr: torch.Tensor, ctx: LINFContext):
        hr = self.checked_images(hr, "hr", ctx.out_size, ctx.inp.shape[0])
        m = (hr - 0.5) / 0.5 - self._bilinear_base(ctx)
        z, log_p = self.encode_patches(to_patches(m, self.config.patch_size, ctx.grid_size), ctx)
        return (z,), log_p.flatten(1).sum(1)

    def decode(self, latent: Latent, ctx: LINFContext) -> torch.Tensor:
        latent = self.checked_latent(latent, ctx)
        H, W = ctx.out_size
        m = self.decode_residual(latent, ctx)[:, :, :H, :W]
        return (m + self._bilinear_base(ctx)) * 0.5 + 0.5

    def initial_prior(self, lr: torch.Tensor, ctx: LINFContext, kind: str = "paper") -> Latent:
        """FlowSR-LP's initial prior: the bilinear-upsampled LR taken as a pseudo-HR; its
        residual against its own down-up copy is pushed through the flow forward.
        `kind="antialiased"` (ours, see INITIAL_PRIORS) takes the bicubic-upsampled LR and an
        antialiased bicubic down-up, so the residual is not zero at odd integer scales."""
        H, W = ctx.full_size
        h, w = ctx.inp.shape[-2:]
        if kind not in INITIAL_PRIORS:
            raise ValueError(f"initial prior must be one of {INITIAL_PRIORS}, got {kind!r}")
        mode = "bilinear" if kind == "paper" else "bicubic"
        up = F.interpolate(ctx.inp, (H, W), mode=mode, align_corners=False)
        up_down = F.interpolate(up, (h, w), mode=mode, align_corners=False, antialias=kind != "paper")
        m = ctx.crop(up - F.interpolate(up_down, (H, W), mode="bilinear", align_corners=False))
        z, _ = self.encode_patches(to_patches(m, self.config.patch_size, ctx.grid_size), ctx, log_p=False)
        return (z,)


#: LINF's last affine layers whose shifts are computed in float32 under autocast (see
#: LINF._affine_params): the last three give most of float32's accuracy at 15 % of its cost
FLOAT32_SHIFTS = 3

#: LINF initial priors: "paper" (bilinear up, bilinear down-up: at odd integer scales the
#: down-up returns the LR exactly, so the residual is zero) and "antialiased" (ours)
INITIAL_PRIORS = ("paper", "antialiased")


#: configurations of the released LINF checkpoints (LINF's Google Drive and FlowSR-LP's)
RELEASED = {
    "linf-edsr-baseline": LINFConfig(encoder="edsr-baseline", patch_size=1),
    "linf-patch-edsr-baseline": LINFConfig(encoder="edsr-baseline", patch_size=3),
    "linf-patch-rrdb": LINFConfig(encoder="rrdb", encoder_args={"nb": 23}, patch_size=3),
    "linf-rdn": LINFConfig(encoder="rdn", patch_size=1),
    "linf-swinir": LINFConfig(encoder="swinir", patch_size=1),
}
