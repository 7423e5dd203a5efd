"""Reading any common image as RGB in [0, 1] (saying what was converted) and writing PNGs
atomically, so a failed or interrupted run never leaves a half-written file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}


from .errors import ImageError  # noqa: F401  (re-exported)


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def read_image(path: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Return (3 x H x W float32 tensor in [0, 1], notes on conversions made)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    notes: list[str] = []
    try:
        with Image.open(path) as im:
            im.load()
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"{im.n_frames}-frame image: using the first frame")
            arr = _to_rgb_array(im, notes)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if _png_bit_depth(path) == 16 and not any("16-bit" in n for n in notes):
        notes.append("16-bit colour PNG read at 8-bit precision")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{path}: empty image")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), notes


def _to_rgb_array(im: Image.Image, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        notes.append(f"{'16-bit' if peak > 255 else mode} grayscale converted to RGB")
        a = np.clip(a / peak, 0, 1).astype(np.float32)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        notes.append("palette image converted to RGB")
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "RGBa", "La"):
        notes.append("alpha channel dropped")
        im = im.convert("RGB")
    elif mode in ("L", "1"):
        notes.append("grayscale converted to RGB")
        im = im.convert("RGB")
    elif mode != "RGB":
        notes.append(f"{mode} image converted to RGB")
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) / 255.0


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """3 x H x W in [0, 1] (clamped here) -> H x W x 3 uint8, rounded."""
    a = img.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return a.permute(1, 2, 0).cpu().numpy()


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` then rename onto `path`; on any error nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_png(img: torch.Tensor, path: str | Path) -> Path:
    """Write a 3 x H x W image in [0, 1] as an 8-bit PNG, atomically."""
    arr = to_uint8(img)
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def images_in(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files (by suffix) in a folder, sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Expand folders (non-recursive); files pass as given, so a missing one is reported
    with the others still processed."""
    out: list[Path] = []
    for item in map(Path, inputs):
        out += images_in(item) if item.is_dir() else [item]
    return out
