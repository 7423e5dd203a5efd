"""`flowsr-lp evaluate`: the paper's protocols over data sets, scales, temperatures and the
learned prior; per-image rows, means, %Inf over repeated runs, diversity and grid score,
written as CSV, JSON, a Markdown table and an HTML report (see report.py)."""
from __future__ import annotations

import base64
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .data.folders import find_images, load_rgb_uint8
from .data.resize import imresize, modcrop
from .distributed import gather_objects
from .errors import ImageError
from .images import atomic_write, image_size
from .metrics import diversity, grid_score, lpips, lr_psnr, psnr, sr_space_diversity, ssim, to_uint8_like_srflow
from .metrics.perceptual import lpips_map, lpips_model
from .pipeline import LatentStrategy, SuperResolver, TemperatureSampling, batched, bicubic
from .report import crop_panel, crop_path, png_bytes, save_crops
from .shards import JobProgress, Journal, shares
from .tiles import batch_limit, release_cached_memory

log = logging.getLogger(__name__)

DATA_ROOTS_ENV = "FLOWSR_LP_DATA"
LEFT_OUT = "left out of every mean"  # in the note of each unreadable input (the CLI then exits 1)
METRICS = ("psnr", "ssim", "lpips", "lr_psnr", "grid")
ROW_HEAD = ("dataset", "image", "scale", "lr_source", "method", "tau", "run", "seed", "finite")  # then inf_rate


@dataclass
class Dataset:
    name: str
    hr: Path
    lr: Path | None  # folder holding X2/X3/X4 ... subfolders of official LR images, if any

    def lr_file(self, stem: str, scale: float) -> Path | None:
        if self.lr is None or scale != int(scale):
            return None
        folder = self.lr / f"X{int(scale)}"
        for cand in (f"{stem}x{int(scale)}", stem):
            for ext in (".png", ".PNG", ".bmp", ".jpg"):
                if (folder / (cand + ext)).is_file():
                    return folder / (cand + ext)
        return None


def data_roots() -> list[Path]:
    """Where named data sets are looked for: $FLOWSR_LP_DATA (os.pathsep-separated), then
    ./data and ./data/benchmark."""
    roots = [Path(p) for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p]
    return roots + [Path("data"), Path("data") / "benchmark"]


def resolve_dataset(spec: str) -> Dataset:
    """A folder (of HR images, or holding HR/ and LR_bicubic/), or a set name looked up in
    $FLOWSR_LP_DATA, ./data, ./data/benchmark (the layout `flowsr-lp data prepare` writes)."""
    p = Path(spec)
    if p.is_dir():
        if (p / "HR").is_dir():
            return Dataset(p.name, p / "HR", p / "LR_bicubic" if (p / "LR_bicubic").is_dir() else None)
        return Dataset(p.name, p, None)
    if spec.upper().startswith("DIV2K"):
        for root in data_roots():
            if (root / "DIV2K" / "DIV2K_valid_HR").is_dir():
                lr = root / "DIV2K" / "DIV2K_valid_LR_bicubic"
                return Dataset("DIV2K", root / "DIV2K" / "DIV2K_valid_HR", lr if lr.is_dir() else None)
    for root in data_roots():
        if (root / spec / "HR").is_dir():
            return resolve_dataset(str(root / spec))
    tried = ", ".join(str(r) for r in data_roots())
    raise FileNotFoundError(f"data set {spec!r} not found (looked for a folder, and for {spec}/HR under {tried}); "
                            f"`flowsr-lp data download {spec} --prepare` fetches the public ones")


def make_pair(path: Path, ds: Dataset, scale: float, lr_source: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(HR float in [0,1], LR float in [0,1], where the LR came from). HR is modcropped so
    that the LR size times the scale is an integer."""
    hr = load_rgb_uint8(path)
    s_int = int(scale) if scale == int(scale) else None
    if s_int:
        hr = modcrop(hr, s_int)
    lr_path = ds.lr_file(path.stem, scale) if lr_source in ("auto", "folder") else None
    if lr_path is not None:
        lr = load_rgb_uint8(lr_path)
        if tuple(lr.shape[-2:]) != (hr.shape[-2] // s_int, hr.shape[-1] // s_int):
            raise ImageError(f"{lr_path}: LR size {tuple(lr.shape[-2:])} does not match HR {tuple(hr.shape[-2:])} / {s_int}")
        return hr.float() / 255, lr.float() / 255, "file"
    if lr_source == "folder":
        raise FileNotFoundError(f"no official LR x{scale:g} image for {path.name} in {ds.lr}")
    lr_size = (round(hr.shape[-2] / scale), round(hr.shape[-1] / scale))
    lr = imresize(hr, out_size=lr_size)  # uint8 in, uint8 out: an LR image, as files store it
    return hr.float() / 255, lr.float() / 255, "matlab-bicubic"


@dataclass
class EvalOptions:
    data: list[str]
    scales: list[float] = field(default_factory=lambda: [4.0])
    taus: list[float] = field(default_factory=lambda: [0.8])
    runs: int = 1
    protocol: str = "linf"  # linf | srflow
    seed: int = 0
    use_lpips: bool = True
    alexnet_weights: str | None = None
    max_images: int | None = None
    lr_source: str = "auto"  # auto | make | folder
    report_images: int = 2
    label: str = ""  # prefixed to method names ("LINF tau=0.8"), to put several flows in one report
    bicubic: bool = False  # add a bicubic baseline row (MATLAB-style bicubic upsampling of the LR)
    precision: str = "fp32"  # the SuperResolver's compute precision (fp32 | bf16 | fp16 | auto)
    batch_size: int = 8  # same-size images upscaled together (see tiles.batch_limit)
    variations: list[float] = field(default_factory=list)  # rows "LP variation=t": samples around the prior
    bpd: bool = False  # a bits/dim column: the HR's density under each method's latent distribution
    sr_space: bool = False  # the NTIRE SR-space diversity score over each method's runs (LPIPS maps)


def protocol_metrics(sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor, scale: float, dataset: str,
                     opts: EvalOptions) -> dict:
    """Metrics of one finite SR (1 x 3 x H x W) under the chosen protocol."""
    s = int(math.ceil(scale))
    if opts.protocol == "srflow":  # SRFlow's Measure: uint8 (truncated), full RGB, skimage SSIM
        q = to_uint8_like_srflow(sr)
        hq = to_uint8_like_srflow(hr)
        out = {"psnr": psnr(q, hq).item(), "ssim": ssim(q, hq, kind="skimage").item(),
               "lr_psnr": lr_psnr(q.double() / 255, lr, scale).item()}
        img, ref = q.float() / 255, hq.float() / 255
    else:  # LINF / LINF-LP: floats; Y channel on benchmarks, RGB on DIV2K; shave = scale
        y = not dataset.upper().startswith("DIV2K")
        out = {"psnr": psnr(sr, hr, shave=s, y_channel=y).item(), "ssim": ssim(sr, hr, kind="matlab").item(),
               "lr_psnr": lr_psnr(sr, lr, scale, shave=s).item()}
        img, ref = sr, hr
    out["grid"] = grid_score(sr, lr).item()
    if opts.use_lpips:
        out["lpips"] = lpips(img, ref, opts.alexnet_weights).item()
    return out


def methods(opts: EvalOptions, resolver: SuperResolver) -> list[tuple[str, float | None, list[LatentStrategy]]]:
    """(method name, tau or None, one strategy per run): sampling at each tau (runs seeded
    seed, seed + 1, ...; one run at tau 0, which is deterministic), then the learned prior."""
    pre = f"{opts.label} " if opts.label else ""
    out = [(f"{pre}tau={t:g}", t, [TemperatureSampling(t, seed=opts.seed + r) for r in range(opts.runs if t > 0 else 1)])
           for t in opts.taus]
    if resolver.prior is not None:
        out.append((f"{pre}LP", None, [resolver.strategy]))
        out += [(f"{pre}LP variation={t:g}", None,
                 [resolver.strategy.with_noise(variation=t, seed=opts.seed + r) for r in range(opts.runs)])
                for t in opts.variations if t > 0]
    return out


def density_strategy(strategies: list[LatentStrategy]) -> LatentStrategy | None:
    """The latent distribution a method samples from (for bits/dim), or None: tau 0 is a
    point mass."""
    s = strategies[0]
    if isinstance(s, TemperatureSampling) and not (s.tau is None or s.tau > 0):
        return None
    return s


def pair_sizes(path: Path, scale: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """(LR size, HR size) of `make_pair(path, ...)`, from the image's header (nothing decoded)."""
    h, w = image_size(path)
    if scale == int(scale):
        s = int(scale)
        h, w = h - h % s, w - w % s
    return (round(h / scale), round(w / scale)), (h, w)


@dataclass
class Job:
    """An evaluation's work. `batches`: same-size items ((data index, image index, scale
    index), data set, path, scale), upscaled together wherever they run; `methods`: (name,
    tau, one strategy per run; the bicubic baseline's is None). A unit is (batch, method,
    run): what one process does at a time, and what the journal records."""

    batches: list[list[tuple]]
    methods: list[tuple]
    notes: list[str]
    pixels: list[int]  # HR pixels of each batch, what a unit of it costs

    def units(self) -> list[tuple[int, int, int]]:
        return [(b, m, r) for b in range(len(self.batches)) for m, (_, _, runs) in enumerate(self.methods)
                for r in range(len(runs))]


def _uid(unit) -> str:
    return "/".join(map(str, unit))


def _left_out(notes: list, ds: Dataset, scale: float, path: Path, e: Exception) -> None:
    msg = " ".join(str(e).split())
    log.error("%s", msg)
    notes.append(f"{ds.name} x{scale:g}: {path.name} {LEFT_OUT}: {msg}")


def plan_job(opts: EvalOptions, resolver: SuperResolver) -> Job:
    """Every (image, scale) of the data sets, grouped in batches of one LR and HR size (at most
    `batch_limit` images each), and the methods; an image whose header cannot be read is left
    out with a note."""
    fixed = getattr(resolver.flow, "fixed_scale", None)
    scales = [s for s in opts.scales if fixed is None or s == fixed]
    notes = []
    if fixed is not None and len(scales) < len(opts.scales):
        notes.append(f"{resolver.flow.kind} is a fixed-scale x{fixed} flow: scales "
                     f"{[s for s in opts.scales if s != fixed]} skipped")
    groups: dict[tuple, list] = {}
    for d, spec in enumerate(opts.data):
        ds = resolve_dataset(spec)
        for i, path in enumerate(find_images([ds.hr])[: opts.max_images]):
            for k, scale in enumerate(scales):
                try:
                    key = pair_sizes(path, scale)
                except (ImageError, ValueError) as e:
                    _left_out(notes, ds, scale, path, e)
                    continue
                groups.setdefault(key, []).append(((d, i, k), ds, path, scale))
    batches, pixels = [], []
    for (lr_hw, (h, w)), items in groups.items():
        n = batch_limit(lr_hw, opts.batch_size)
        for k in range(0, len(items), n):
            batches.append(items[k : k + n])
            pixels.append(h * w * len(batches[-1]))
    plan = methods(opts, resolver)
    if opts.bicubic:
        plan.insert(0, (f"{opts.label} bicubic".strip(), None, [None]))
    return Job(batches, plan, notes, pixels)


def evaluate(flow, prior, opts: EvalOptions, out_dir: Path, rank: int = 0, world: int = 1, progress: bool = True,
             journal: Journal | None = None):
    """Rows (one per image, scale, method and run), notes and report crops of the whole job,
    returned on rank 0 (empty lists on the others). The units (same-size images, method, run)
    not in `journal` yet are split over the `world` processes in contiguous shares of about
    equal cost; each finished unit is recorded in `journal` (default: kept in memory). Every
    image gets the seeds and the batch a single process gives it, so the values do not depend
    on the number of processes. Statistics over runs (diversity, SR-space) are computed where
    all the runs of an (image, method) are, at the end on rank 0 when they were split."""
    resolver = SuperResolver(flow, prior, precision=opts.precision)
    if opts.use_lpips or opts.sr_space:
        lpips_model(resolver.device, opts.alexnet_weights)  # fail now, not after hours of work
    job = plan_job(opts, resolver)
    journal = journal or Journal(None, {})
    earlier = list(journal.records)
    units = job.units()
    done = {r["unit"] for r in earlier if "unit" in r}
    todo = [u for u in units if _uid(u) not in done]
    mine = [todo[k] for k in shares([job.pixels[u[0]] for u in todo], world)[rank]]
    bar = JobProgress(len(units), len(units) - len(todo), rank=rank, world=world, desc="evaluate",
                      enabled=progress)
    runner = _Runner(resolver, job, opts, journal, done, mine)
    for unit in mine:
        runner.run(unit)
        _, ds, path, scale = job.batches[unit[0]][0]
        bar.step(note=f"{ds.name} x{scale:g} {path.name}")
    parts = gather_objects((journal.records[len(earlier):], runner.open_samples()), world)
    bar.close()
    if rank != 0:
        return [], [], []
    samples = {name: t for _, part in parts for name, t in part.items()}
    return runner.merge(earlier + [rec for recs, _ in parts for rec in recs], samples, Path(out_dir))


def _upscaled(resolver: SuperResolver, items: list, plan, tiled: bool = False) -> dict | None:
    """{method: one `SRResult` per run} of same-size pairs as one batch, or of one pair in
    tiles (`SuperResolver.retry_tile`); None when that ran out of memory (or the size cannot be tiled)."""
    lr, size = torch.cat([it[5] for it in items]), tuple(items[0][4].shape[-2:])
    tile = resolver.retry_tile(tuple(lr.shape[-2:]), size) if tiled else None
    if tiled and tile is None:
        return None
    try:
        prepared = resolver.prepare(lr, size=size, tile=tile)
        return {m: [resolver.generate(prepared, batched(s, len(items))) for s in strategies]
                for m, _, strategies in plan}
    except torch.OutOfMemoryError:
        pass
    release_cached_memory()  # outside the handler: its traceback no longer holds the tensors
    return None


class _Runner:
    """Runs one process's units of a `Job` (the images of a batch loaded and conditioned once
    for its consecutive units) and merges the records of every process on rank 0."""

    def __init__(self, resolver: SuperResolver, job: Job, opts: EvalOptions, journal: Journal, done: set, mine):
        self.resolver, self.job, self.opts, self.journal = resolver, job, opts, journal
        self.done = set(done)  # unit ids recorded, by any process, before or now
        self.mine = {_uid(u) for u in mine}
        self.touched: set[tuple[int, int]] = set()  # (batch, method) groups with a sample saved here
        self._batch, self._items, self._notes, self._prepared, self._alone = None, [], [], None, False
        self._bpd: dict | None = None

    # ---- loading ----
    def load(self, b: int) -> list:
        """The batch's items (ds, i, path, scale, hr, lr, lr_from, item id) on the device, None
        where an image could not be read. The item id, 'data/image/scale' indices, orders the rows."""
        if self._batch != b:
            self._batch, self._items, self._notes, self._prepared, self._alone = b, [], [], None, False
            self._bpd = None
            dev = self.resolver.device
            for (d, i, k), ds, path, scale in self.job.batches[b]:
                try:
                    hr, lr, lr_from = make_pair(path, ds, scale, self.opts.lr_source)
                except (ImageError, ValueError) as e:  # a corrupt or unusable image: the others go on
                    _left_out(self._notes, ds, scale, path, e)
                    self._items.append(None)
                    continue
                self._items.append((ds, i, path, scale, hr[None].to(dev), lr[None].to(dev), lr_from, f"{d}/{i}/{k}"))
        return self._items

    def _generate(self, live: list, strategy) -> list:
        """(images, finite) per item with `strategy`, as one batch; after an out-of-memory each
        image alone, then in tiles (None: left out)."""
        if not self._alone:
            try:
                if self._prepared is None:
                    size = tuple(live[0][4].shape[-2:])
                    self._prepared = self.resolver.prepare(torch.cat([it[5] for it in live]), size=size)
                res = self.resolver.generate(self._prepared, batched(strategy, len(live)))
                return [(res.images[k : k + 1], bool(res.finite[k])) for k in range(len(live))]
            except torch.OutOfMemoryError:
                pass
            self._prepared, self._alone = None, True
            release_cached_memory()  # outside the handler: its traceback no longer holds the tensors
            if len(live) > 1:
                log.warning("out of memory upscaling %d images together; running them one by one", len(live))
        out = []
        for it in live:
            plan = [("", None, [strategy])]
            res = (_upscaled(self.resolver, [it], plan) if len(live) > 1 else None) or \
                _upscaled(self.resolver, [it], plan, tiled=True)
            if res is None:
                log.error("%s x%g: %s out of memory even in tiles: left out", it[0].name, it[3], it[2].name)
            out.append(None if res is None else (res[""][0].images[0:1], bool(res[""][0].finite[0])))
        return out

    # ---- one unit ----
    def run(self, unit) -> None:
        b, m, r = unit
        items = self.load(b)
        name, tau, strategies = self.job.methods[m]
        strategy = strategies[r]
        live = [it for it in items if it is not None]
        rows = {}
        if strategy is None:  # the bicubic baseline
            results = [(bicubic(it[5], tuple(it[4].shape[-2:])), True) for it in live]
        else:
            results = self._generate(live, strategy) if live else []
        bpd = {}
        if self.opts.bpd and r == 0 and live:
            if self._bpd is None:  # every method's, from one encoding of the batch
                self._bpd = _bits_per_dim(self.resolver, live, self.job.methods)
            bpd = self._bpd
        samples = {}
        for k, (it, res) in enumerate(zip(live, results)):
            if res is None:
                continue
            ds, _, path, scale, hr, lr, lr_from, iid = it
            sr, ok = res
            row = {"dataset": ds.name, "image": path.stem, "scale": scale, "lr_source": lr_from, "method": name,
                   "tau": "" if tau is None else tau, "run": r,
                   "seed": "" if tau is None or strategy is None else strategy.seed, "finite": ok}
            if ok:
                sr = sr.clamp(0, 1)
                row.update(protocol_metrics(sr, hr, lr, scale, ds.name, self.opts))
                samples[k] = sr
            if name in bpd:
                row["bpd"] = bpd[name][k]
            rows[iid] = row
        rec = {"unit": _uid(unit), "rows": rows, "notes": self._notes}
        if len(strategies) == 1:
            rec.update(group=_uid((b, m)), stats=self.stats(b, m, {k: [x] for k, x in samples.items()}))
        else:
            for k, x in samples.items():
                self.journal.put_sample(_sample(b, m, r, k), x)
            self.touched.add((b, m))
        self.journal.record(rec)
        self.done.add(_uid(unit))
        runs = [_uid((b, m, q)) for q in range(len(strategies))]
        if len(strategies) > 1 and all(u in self.done for u in runs) and r == max(
                q for q in range(len(strategies)) if runs[q] in self.mine):
            self.complete(b, m)  # every run is here: its statistics now, the samples go

    # ---- statistics over runs ----
    def stats(self, b: int, m: int, samples: dict[int, list]) -> dict:
        """{item id: diversity, SR-space score (two finite runs or more) and the report crop of the
        first finite run} of batch b's items under method m; `samples`: by item index among the
        batch's readable items, the finite runs' clamped images in run order."""
        strategies = self.job.methods[m][2]
        out = {}
        for k, it in enumerate(x for x in self.load(b) if x is not None):
            xs = [x.cpu() for x in samples.get(k, [])]
            st = {}
            if len(xs) > 1:
                st["diversity"] = diversity(torch.stack(xs)).item()
                if self.opts.sr_space:
                    st["sr_space"] = sr_space_diversity(torch.cat(xs).to(it[4].device), it[4], math.ceil(it[3]),
                                                        lambda a, c: lpips_map(a, c, self.opts.alexnet_weights))
            if xs and it[1] < self.opts.report_images and strategies[0] is not None:
                st["crop"] = base64.b64encode(png_bytes(crop_panel(xs[0], it[4].cpu()))).decode()
            out[it[7]] = st
        return out

    def complete(self, b: int, m: int, found: dict | None = None) -> dict:
        """Record (and return) the statistics of group (b, m) from its samples, saved here or
        in `found`; then drop them."""
        runs, found = len(self.job.methods[m][2]), found or {}
        samples: dict[int, list] = {}
        for r in range(runs):
            for k in range(len([x for x in self.load(b) if x is not None])):
                x = found.get(_sample(b, m, r, k))
                x = self.journal.get_sample(_sample(b, m, r, k)) if x is None else x
                if x is not None:
                    samples.setdefault(k, []).append(x)
        stats = self.stats(b, m, samples)
        self.journal.record({"group": _uid((b, m)), "stats": stats})
        self.journal.drop_samples(_sample(b, m, r, k) for r in range(runs) for k in range(len(self.job.batches[b])))
        self.touched.discard((b, m))
        return stats

    def open_samples(self) -> dict:
        """The samples of groups this process could not complete (their runs were split)."""
        out = {}
        for b, m in self.touched:
            for r in range(len(self.job.methods[m][2])):
                for k in range(len(self.job.batches[b])):
                    x = self.journal.get_sample(_sample(b, m, r, k))
                    if x is not None:
                        out[_sample(b, m, r, k)] = x
        return out

    # ---- rank 0: the whole job ----
    def merge(self, records: list[dict], samples: dict, out_dir: Path):
        """Rows in the order of a single process, notes, and the report's crops (written here)."""
        units = {rec["unit"]: rec for rec in records if "unit" in rec}
        groups = {rec["group"]: rec["stats"] for rec in records if "group" in rec}
        notes = list(dict.fromkeys(self.job.notes + [n for rec in units.values() for n in rec["notes"]]))
        keyed, evaluated = [], set()
        for b, batch in enumerate(self.job.batches):
            for m, (name, _, strategies) in enumerate(self.job.methods):
                if _uid((b, m)) not in groups:  # its runs were split over processes
                    groups[_uid((b, m))] = self.complete(b, m, samples)
                for planned in batch:
                    iid = "/".join(map(str, planned[0]))
                    runs = [units[_uid((b, m, r))]["rows"].get(iid) for r in range(len(strategies))]
                    runs = [x for x in runs if x is not None]
                    evaluated.update([iid] if runs else [])
                    st = groups.get(_uid((b, m)), {}).get(iid, {})
                    for x in runs:
                        row = {k: v for k, v in x.items() if k not in ROW_HEAD + ("bpd",)}
                        row = {**{k: x[k] for k in ROW_HEAD},
                               "inf_rate": 100.0 * sum(not y["finite"] for y in runs) / len(runs), **row}
                        if x["finite"]:
                            row.update({k: st[k] for k in ("diversity", "sr_space") if k in st})
                        if "bpd" in runs[0]:
                            row["bpd"] = runs[0]["bpd"]
                        keyed.append(((planned[0], m, x["run"]), row))
        rows = [row for _, row in sorted(keyed, key=lambda kr: kr[0])]
        return rows, notes, self.crops(groups, evaluated, out_dir)

    def crops(self, groups: dict, evaluated: set, out_dir: Path) -> list[dict]:
        """Report crops (HR, bicubic, each method's first finite run) of the first
        `report_images` images of each data set and scale that have rows (`evaluated` item
        ids), written to out_dir/crops."""
        entries = {}
        for b, batch in enumerate(self.job.batches):
            for (d, i, k), ds, path, scale in batch:
                if i >= self.opts.report_images or f"{d}/{i}/{k}" not in evaluated:
                    continue
                hr, lr, _ = make_pair(path, ds, scale, self.opts.lr_source)
                label = self.opts.label
                entry = save_crops(out_dir, ds.name, path.stem, scale, hr[None], lr[None], {}, label)
                for m, (name, _, _) in enumerate(self.job.methods):
                    crop = groups.get(_uid((b, m)), {}).get(f"{d}/{i}/{k}", {}).get("crop")
                    if crop is not None:
                        entry["panels"][name] = crop_path(ds.name, path.stem, scale, name, label)
                        data = base64.b64decode(crop)
                        atomic_write(out_dir / entry["panels"][name], lambda tmp, data=data: Path(tmp).write_bytes(data))
                entries[(d, i, k)] = entry
        return [entries[key] for key in sorted(entries)]


def _sample(b: int, m: int, r: int, k: int) -> str:
    return f"{b}-{m}-{r}-{k}"


def _bits_per_dim(resolver: SuperResolver, items: list, plan) -> dict[str, list[float]]:
    """{method: bits/dim of each item's HR under the method's latent distribution}."""
    hr, lr = torch.cat([it[4] for it in items]), torch.cat([it[5] for it in items])
    dens = [(method, s) for method, _, strategies in plan if (s := density_strategy(strategies)) is not None]
    if not dens:
        return {}
    values = resolver.bits_per_dim_each(hr, lr, [s for _, s in dens])
    return {method: v.tolist() for (method, _), v in zip(dens, values)}


def summarise(rows: list[dict]) -> list[dict]:
    """Means per (dataset, scale, method): metrics averaged over finite runs of an image,
    then over images; %Inf (each image's share of runs that exploded) over images.
    `images` counts the images evaluated, `covers` how many of them each metric's mean
    covers: an image whose every run exploded has no metric values (see report.coverage)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], float(r["scale"]), r["method"]), []).append(r)
    out = []
    for (ds, scale, method), rs in groups.items():
        per_image: dict[str, list[dict]] = {}
        for r in rs:
            per_image.setdefault(r["image"], []).append(r)
        entry = {"dataset": ds, "scale": scale, "method": method, "images": len(per_image), "runs": len(rs),
                 "inf_rate": sum(float(img_rows[0]["inf_rate"]) for img_rows in per_image.values()) / len(per_image)}
        entry["covers"] = {}
        for m in METRICS + ("diversity", "sr_space", "bpd"):
            vals = []
            for img_rows in per_image.values():
                v = [float(r[m]) for r in img_rows if r["finite"] and r.get(m, "") not in ("", None)]
                if v:
                    vals.append(sum(v) / len(v))
            entry[m] = sum(vals) / len(vals) if vals else None
            if vals:
                entry["covers"][m] = len(vals)
        out.append(entry)
    order = {m: k for k, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    return sorted(out, key=lambda e: (e["dataset"], e["scale"], order[e["method"]]))
