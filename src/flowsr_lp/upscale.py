"""Image files in, PNGs out, through one `SuperResolver`; one failing input never stops the rest."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from PIL import Image

from .checkpoints import load_flow, load_prior
from .distributed import gather_objects
from .errors import ExplodingInverse, ImageError, UsageError, first_line
from .images import IMAGE_SUFFIXES, image_size, read_image, write_png
from .pipeline import Prepared, SRResult, SuperResolver, TemperatureSampling, batched, output_size
from .shards import JobProgress, shares
from .tiles import batch_limit, release_cached_memory
from .hub.resolve import default_models, flow_for_prior

log = logging.getLogger(__name__)


def load_models(flow_path, prior_path, device, taps=None):
    """(flow, prior or None). Without a flow path: the flow a registry prior names (`--prior
    rrdb-linf-lp` alone), else the bundled small LINF and its latent module."""
    flow_path = flow_path or flow_for_prior(prior_path)
    if flow_path is None:
        flow_path, default_prior = default_models()
        prior_path = prior_path or default_prior
    flow = load_flow(flow_path, device=device, taps=taps)
    prior = load_prior(prior_path, device=device) if prior_path is not None else None
    return flow, prior


def output_paths(inputs: list[Path], out: Path) -> list[Path]:
    """One output per input: `out` itself for a single input named like an image, else
    `out/STEM.png`. Several inputs and an `out` that is a file (or named like one) is a
    usage error, found before any work."""
    named_like_image = out.suffix.lower() in IMAGE_SUFFIXES
    exists, is_dir = out.exists(), out.is_dir()
    is_file = exists and not is_dir
    if len(inputs) > 1 and (named_like_image or is_file):
        raise UsageError(f"-o {out}: {len(inputs)} inputs need an output folder, and {out} is "
                         + ("an existing file" if exists else "named like an image file"))
    single = named_like_image and not is_dir
    if single and out.suffix.lower() != ".png":
        raise UsageError(f"{out}: outputs are PNG files; use a .png name or a folder")
    if not single and is_file:
        raise UsageError(f"-o {out}: an existing file, not a folder")
    return [out] if single else [out / (p.stem + ".png") for p in inputs]


def draw_strategy(resolver: SuperResolver, tau=None, seed: int = 0, variation: float = 0.0):
    """The strategy of one draw: sampling at `tau` without a learned prior; with one, the
    prior's prediction, or samples around it (`variation` > 0)."""
    if resolver.prior is None:
        return TemperatureSampling(tau, seed=seed)
    return resolver.strategy.with_noise(variation=variation, seed=seed)


def upscale_with_retries(resolver: SuperResolver, lr: torch.Tensor, size, tau=None, seed: int = 0,
                         retries: int = 0, name="", first: SRResult | None = None, variation: float = 0.0,
                         seed_step: int = 1, prepared: Prepared | None = None) -> tuple[torch.Tensor, Prepared | None]:
    """One SR image (3 x H x W, raw) with the resolver's strategy (sampling at `tau` when it
    has no learned prior); on an exploding inverse, redraw with seed + 1, ... up to `retries`
    times; raises `ExplodingInverse` when every draw exploded. `first`: the first draw's
    result when it was already computed (the image's share of a batch). An image that runs
    out of memory whole is retried in tiles (`SuperResolver.retry_tile`). Retry k uses seed +
    k * seed_step (several draws of an image step by their count, so seeds never repeat).
    `prepared`: the image's conditioning from an earlier draw. Returns the image and the
    conditioning it used (None when it had none to compute), for the next draw."""
    tile = None  # this image's tile side once it ran out of memory whole
    sampling = resolver.prior is None or variation > 0
    for attempt in range(retries + 1):
        strategy = draw_strategy(resolver, tau, seed + attempt * seed_step, variation)
        if attempt == 0 and first is not None:
            result = first
        else:
            result = None
            try:
                prepared = prepared or resolver.prepare(lr, size=size, tile=tile)
                result = resolver.generate(prepared, strategy)
            except torch.OutOfMemoryError:
                whole = prepared is None or prepared.tiles is None
                prepared, tile = None, resolver.retry_tile(tuple(lr.shape[-2:]), size) if whole else None
                if tile is None:
                    raise
                log.warning("%s: out of memory upscaled whole; retrying in tiles", name)
            if result is None:
                release_cached_memory()
                prepared = resolver.prepare(lr, size=size, tile=tile)
                result = resolver.generate(prepared, strategy)
        if result.all_finite:
            return result.images[0], prepared
        if strategy.deterministic:
            break  # the same latent every time: a retry cannot help
        if attempt < retries:
            log.warning("%s: exploding inverse (inf/NaN) with seed %d; retrying with seed %d",
                        name, seed + attempt * seed_step, seed + (attempt + 1) * seed_step)
    tries = "1 draw" if attempt == 0 else f"{attempt + 1} draws"
    hint = " (try --retries N or a lower --tau / --variation)" if sampling else ""
    raise ExplodingInverse(f"exploding inverse: the flow's output went inf/NaN ({tries}); nothing written{hint}")


class _Failures:
    """The inputs that failed (`failed`, a set shared by the draws of a call); `each(src)` logs
    one input's failure as one error line and lets the others go on."""

    def __init__(self, failed: set | None = None, quiet: bool = False):
        self.failed = failed if failed is not None else set()
        self.quiet = quiet  # count the failures without logging them (they are logged elsewhere)

    @property
    def count(self) -> int:
        return len(self.failed)

    @contextlib.contextmanager
    def each(self, src: Path, hw=None):
        try:
            yield
            return
        except (ImageError, ExplodingInverse, ValueError, OSError) as e:
            msg = " ".join((str(e) or type(e).__name__).split())
            msg = msg if msg.startswith(str(src)) else f"{src}: {msg}"
        except torch.OutOfMemoryError:
            msg = (f"{src}: out of memory at {'x'.join(map(str, hw)) if hw else 'this size'}; lower --max-megapixels "
                   "or the scale, or use a device with more memory")
        except RuntimeError as e:  # any other failure of the device or the model on this input
            msg = f"{src}: {first_line(e)}"
        self.failed.add(src)
        if not self.quiet:
            log.error("%s", msg)


def upscale_files(resolver: SuperResolver, inputs: list[Path], outs: list[Path], *, scale=None, size=None,
                  tau=None, seed: int = 0, retries: int = 0, max_megapixels: float = 64.0,
                  progress: bool = True, batch_size: int = 1, variation: float = 0.0, draws: int = 1,
                  skip_existing: bool = False, rank: int = 0, world: int = 1) -> int:
    """Upscale each input to its output path (by `scale` or to `size`); each failure is logged
    as an error and the rest still run. Inputs of the same LR size run through the resolver
    together, up to `batch_size` at a time (see `batch_limit`); every image is still seeded
    with `seed` as when alone. `draws` > 1: N samples of each input, written as STEM_0.png,
    STEM_1.png, ... (draw d seeded with seed + d). `skip_existing`: outputs that are already
    whole PNGs of the right size are left as they are. Under torchrun (`world` > 1) the
    batches are shared out over the processes (each one as a single process runs it, so the
    files are the same) with one progress bar on rank 0. Returns the number of failed inputs
    (of the whole job)."""
    failed: set = set()
    failures = _Failures(failed)
    checks = _Failures(failed, quiet=rank != 0)  # every process checks the headers; rank 0 says what failed
    # the draws of a batch follow each other (and so stay on one process): its inputs are read
    # and conditioned once (`_LastBatch`)
    units = [(k, hw, items if draws == 1 else [(src, dst.with_name(f"{dst.stem}_{k}.png")) for src, dst in items])
             for hw, items in _plan(inputs, outs, scale, size, max_megapixels, batch_size, checks)
             for k in range(draws)]
    if skip_existing:
        found = gather_objects({(k, dst) for n, (k, hw, items) in enumerate(units) if n % world == rank
                                for _, dst in items if complete_png(dst, hw)}, world)
        whole = set().union(*found)
        units = [(k, hw, [it for it in items if (k, it[1]) not in whole]) for k, hw, items in units]
        if rank == 0 and whole:
            log.info("%d output(s) already complete: skipped", len(whole))
    units = [u for u in units if u[2]]
    todo = sum(len(items) for _, _, items in units)
    bar = JobProgress(draws * len(inputs), draws * len(inputs) - todo, rank=rank, world=world, desc="upscale",
                      unit="img", enabled=progress)
    costs = [len(items) * hw[0] * hw[1] for _, hw, items in units]
    last = _LastBatch()
    for n in shares(costs, world)[rank]:
        k, hw, items = units[n]
        _upscale_batch(resolver, items, hw, tau, seed + k, retries, failures, bar, variation, draws, last)
    failed = set().union(*gather_objects(failed, world))
    bar.close()
    return len(failed)


def _plan(inputs, outs, scale, size, max_megapixels, batch_size, failures: _Failures) -> list[tuple]:
    """(output size, [(input, output), ...]) batches of same-size inputs, checked from their
    headers in input order (nothing decoded yet); the inputs that fail go to `failures`."""
    seen, groups = {}, {}
    for src, dst in zip(inputs, outs):
        with failures.each(src):
            if dst.resolve() == src.resolve():
                raise ImageError(f"{src}: output would overwrite the input; choose another -o")
            if dst in seen:
                raise ImageError(f"{src}: output {dst} is already taken by {seen[dst]}")
            lr_hw = image_size(src)
            hw = size or output_size(lr_hw, scale)
            mp = hw[0] * hw[1] / 1e6
            if mp > max_megapixels:
                raise ImageError(f"{src}: output {hw[0]}x{hw[1]} is {mp:.1f} MP, over the "
                                 f"--max-megapixels limit of {max_megapixels:g}")
            seen[dst] = src
            groups.setdefault((lr_hw, hw), []).append((src, dst))
    return [(hw, items[k : k + n]) for (lr_hw, hw), items in groups.items() for n in [batch_limit(lr_hw, batch_size)]
            for k in range(0, len(items), n)]


def complete_png(path: Path, hw) -> bool:
    """True when `path` holds a whole, valid PNG of size hw (`--skip-existing`)."""
    try:
        with Image.open(path) as im:
            if im.format != "PNG" or (im.height, im.width) != tuple(hw):
                return False
            im.verify()  # every chunk's checksum, up to the end chunk: a cut file fails
        return True
    except Exception:  # noqa: BLE001 - missing, unreadable or damaged in any way: not complete
        return False


class _LastBatch:
    """The last batch's inputs (`key`: output size and input paths), read once: their LR
    tensors, the inputs that could not be read, the conditioning (`prepared`, of the whole
    batch, or of its one image) and whether the batch failed as a whole (`split`: its later
    draws run image by image at once)."""

    def __init__(self):
        self.start(None)

    def start(self, key) -> None:
        if key is None or key != self.key:
            self.key, self.lrs, self.unreadable, self.prepared, self.split = key, {}, set(), None, False


def _upscale_batch(resolver, items, hw, tau, seed, retries, failures: _Failures, bar, variation=0.0,
                   seed_step=1, last: _LastBatch | None = None) -> None:
    """Same-size inputs: read, upscaled as one batch (each with its own seed), written; an
    image that exploded is redrawn alone (`--retries`), and if the batch as a whole fails
    each image runs alone, so that its own error is reported. `last`: the previous call's
    batch, whose inputs and conditioning this one reuses when it is the same batch (a later
    draw)."""
    last = last or _LastBatch()
    last.start((tuple(hw), tuple(src for src, _ in items)))
    ready = []
    for src, dst in items:
        if src in last.lrs:
            ready.append((src, dst, last.lrs[src]))
            continue
        if src not in last.unreadable:
            with failures.each(src, hw):
                lr, notes = read_image(src)
                for note in notes:
                    log.warning("%s: %s", src, note)
                ready.append((src, dst, lr))
                last.lrs[src] = lr
                continue
            last.unreadable.add(src)
        bar.update()  # reached when the input failed
    batch, split_now = None, False
    if len(ready) > 1 and not last.split:
        strategy = batched(draw_strategy(resolver, tau, seed, variation), len(ready))
        try:
            last.prepared = last.prepared or resolver.prepare(torch.stack([lr for _, _, lr in ready]), size=hw)
            batch = resolver.generate(last.prepared, strategy)
        except (RuntimeError, ValueError, UsageError) as e:  # out of memory, a device error ...: each image
            # alone says what it is
            log.warning("a batch of %d images failed (%s); running them one by one", len(ready),
                        first_line(e))
            last.prepared, last.split = None, True
            split_now = True
    if split_now:
        release_cached_memory()  # after the handler: its traceback held the batch's tensors
    for i, (src, dst, lr) in enumerate(ready):
        with failures.each(src, hw):
            first = None if batch is None else SRResult(batch.images[i : i + 1], batch.finite[i : i + 1],
                                                        batch.strategy)
            alone = len(ready) == 1
            sr, prepared = upscale_with_retries(resolver, lr, hw, tau, seed, retries, src, first, variation,
                                                seed_step, last.prepared if alone else None)
            if alone:
                last.prepared = prepared
            try:
                write_png(sr, dst)
            except OSError as e:  # read-only folder, disk full ...
                raise ImageError(f"{src}: cannot write {dst}: {e.strerror or e}") from None
        bar.set_postfix_str(src.name)
        bar.update()
