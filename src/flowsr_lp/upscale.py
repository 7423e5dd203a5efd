"""`flowsr-lp upscale`: files and folders in, PNGs out, one failing input never stops the rest."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoints import CheckpointError, load_flow
from .cli import CLIError
from .images import IMAGE_SUFFIXES, ImageError, list_images, read_image, write_png
from .pipeline import SuperResolver, finite_mask, output_size


from .errors import ExplodingInverse  # noqa: F401  (re-exported)


def load_models(flow_path, prior_path, device, taps=None):
    try:
        if flow_path is None:
            from .zoo import default_models

            flow_path, default_prior = default_models()
            prior_path = prior_path or default_prior
        flow = load_flow(flow_path, device=device, taps=taps)
        prior = None
        if prior_path is not None:
            from .priors import load_prior

            prior = load_prior(prior_path, device=device)
    except (CheckpointError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    except RuntimeError as e:  # e.g. an unavailable device
        raise CLIError(str(e).splitlines()[0]) from None
    return flow, prior


def output_paths(inputs: list[Path], out: Path) -> list[Path]:
    single_file = len(inputs) == 1 and out.suffix.lower() in IMAGE_SUFFIXES
    if single_file and out.suffix.lower() != ".png":
        raise CLIError(f"{out}: outputs are PNG files; use a .png name or a folder")
    return [out] if single_file else [out / (p.stem + ".png") for p in inputs]


def upscale_one(resolver: SuperResolver, lr: torch.Tensor, args, size, retries: int, name="") -> torch.Tensor:
    for attempt in range(retries + 1):
        gen = torch.Generator().manual_seed(args.seed + attempt)
        sr = resolver.upscale(lr, size, tau=args.tau, generator=gen)
        if bool(finite_mask(sr).all()):
            return sr[0]
        if resolver.prior is not None:
            break  # a deterministic latent gives the same result every time
        if attempt < retries:
            tqdm.write(f"note: {name}: exploding inverse (inf/NaN) with seed {args.seed + attempt}; "
                       f"retrying with seed {args.seed + attempt + 1}", file=sys.stderr)
    tries = "1 draw" if resolver.prior is not None or retries == 0 else f"{retries + 1} draws"
    hint = "" if resolver.prior is not None else " (try --retries N or a lower --tau)"
    raise ExplodingInverse(f"exploding inverse: the flow's output went inf/NaN ({tries}); nothing written{hint}")


def upscale_files(args) -> int:
    device = torch.device(args.device)
    flow, prior = load_models(args.flow, args.prior, device, args.taps)
    fixed = getattr(flow, "fixed_scale", None)
    if args.scale is None and args.size is None:
        if fixed is None:
            raise CLIError("give --scale or --size")
        args.scale = fixed
    if fixed is not None and args.scale is not None and args.scale not in (fixed, (fixed, fixed)):
        raise CLIError(f"this flow is fixed-scale x{fixed}; --scale {args.scale} is not possible")
    if args.retries < 0:
        raise CLIError("--retries must be >= 0")
    if prior is not None and args.tau is not None:
        print("note: --tau is ignored with a learned prior (the latent is predicted, not sampled)", file=sys.stderr)
    try:
        resolver = SuperResolver(flow, prior, prior_max_pixels=args.prior_max_pixels)
    except ValueError as e:
        raise CLIError(str(e)) from None
    inputs = list_images(args.inputs)
    if not inputs:
        raise CLIError("no input images found")
    outs = output_paths(inputs, Path(args.out))
    failures, seen = 0, {}
    bar = tqdm(list(zip(inputs, outs)), desc="upscale", unit="img", disable=args.quiet, file=sys.stderr)
    for src, dst in bar:
        bar.set_postfix_str(src.name)
        try:
            if dst.resolve() == src.resolve():
                raise ImageError(f"{src}: output would overwrite the input; choose another -o")
            if dst in seen:
                raise ImageError(f"{src}: output {dst} is already taken by {seen[dst]}")
            lr, notes = read_image(src)
            for note in notes:
                tqdm.write(f"note: {src}: {note}", file=sys.stderr)
            size = args.size or output_size(tuple(lr.shape[-2:]), args.scale)
            mp = size[0] * size[1] / 1e6
            if mp > args.max_megapixels:
                raise ImageError(f"{src}: output {size[0]}x{size[1]} is {mp:.1f} MP, over the "
                                 f"--max-megapixels limit of {args.max_megapixels:g}")
            sr = upscale_one(resolver, lr, args, size, args.retries, src)
            write_png(sr, dst)
            seen[dst] = src
        except (ImageError, ExplodingInverse, ValueError) as e:
            failures += 1
            msg = str(e)
            tqdm.write(f"error: {msg if msg.startswith(str(src)) else f'{src}: {msg}'}", file=sys.stderr)
        except torch.OutOfMemoryError:
            failures += 1
            tqdm.write(f"error: {src}: out of memory at {size[0]}x{size[1]}; lower --max-megapixels or the "
                       "scale, or use a device with more memory", file=sys.stderr)
    bar.close()
    done = len(inputs) - failures
    print(f"{done} of {len(inputs)} image(s) written to {args.out}", file=sys.stderr)
    return 0 if failures == 0 else 1
