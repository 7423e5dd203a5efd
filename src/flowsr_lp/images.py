"""Reading any common image as RGB in [0, 1] (saying what was converted) and writing PNGs
atomically, so a failed or interrupted run never leaves a half-written file."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, first_line  # ImageError is also imported from here by callers

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}

logger = logging.getLogger(__name__)


#: decoding refuses images whose header declares more pixels than this (float32 RGB of
#: 2^27 pixels is 1.5 GB); pass max_pixels=None to lift it
MAX_DECODE_PIXELS = 1 << 27


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _unreadable(path: Path, e: BaseException) -> ImageError:
    first = first_line(e)[:160]
    return ImageError(f"{path}: not a readable image ({first})")


@contextlib.contextmanager
def _open(path: Path):
    """PIL image opened lazily (header only); every failure becomes a one-line ImageError.
    Our own pixel limit replaces PIL's decompression-bomb guard."""
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: {first_line(e)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise _unreadable(path, e) from None
    with im:
        yield im


def _check_pixels(path: Path, w: int, h: int, max_pixels: int | None) -> None:
    if w < 1 or h < 1:
        raise ImageError(f"{path}: empty image ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(f"{path}: {w}x{h} is {w * h / 1e6:.1f} MP, over the limit of {max_pixels / 1e6:.1f} MP "
                         "for decoding an image")


def image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(H, W) as displayed (EXIF orientation applied), from the header only: nothing is
    decoded. With `max_pixels`, a larger image is an ImageError."""
    path = Path(path)
    with _open(path) as im:
        w, h = im.size
        _check_pixels(path, w, h, max_pixels)
        return (w, h) if _orientation(im) in (5, 6, 7, 8) else (h, w)


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1: as stored; 2-8: flipped and/or rotated)."""
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a damaged EXIF block: show the pixels as stored
        return 1


def _decode(path: Path, notes: list[str], max_pixels: int | None) -> np.ndarray:
    """H x W x 3: uint8 for 8-bit images, float32 in [0, 1] for deeper ones."""
    with _open(path) as im:
        _check_pixels(path, *im.size, max_pixels)  # before any pixel is decoded
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
                if getattr(im, "n_frames", 1) > 1:
                    notes.append(f"{im.n_frames}-frame image: using the first frame")
                if _orientation(im) in range(2, 9):
                    ImageOps.exif_transpose(im, in_place=True)
                    notes.append("turned upright as its EXIF orientation says")
            return rgb_array(im, notes)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise _unreadable(path, e) from None


def read_image(path: str | Path, max_pixels: int | None = MAX_DECODE_PIXELS) -> tuple[torch.Tensor, list[str]]:
    """Return (3 x H x W float32 tensor in [0, 1], notes on conversions made). The header's
    size is checked against ``max_pixels`` before decoding."""
    path = Path(path)
    notes: list[str] = []
    arr = _decode(path, notes, max_pixels)
    if _png_bit_depth(path) == 16 and not any("16-bit" in n for n in notes):
        notes.append("16-bit colour PNG read at 8-bit precision")
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr
    return torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C")), notes


def load_rgb_uint8(path: str | Path, max_pixels: int | None = MAX_DECODE_PIXELS) -> torch.Tensor:
    """3 x H x W uint8 RGB, through the same decoder as `read_image` (16-bit images rounded
    to 8 bits, EXIF orientation applied, size checked before decoding)."""
    arr = _decode(Path(path), [], max_pixels)
    if arr.dtype != np.uint8:
        arr = np.round(arr * 255.0).astype(np.uint8)
    return torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C"))  # a writable copy


def rgb_array(im: Image.Image, notes: list[str]) -> np.ndarray:
    """Any PIL mode -> H x W x 3: uint8 for 8-bit modes, float32 in [0, 1] for the others (a
    plain convert("RGB") would clip them); what was converted goes to `notes`. The range is
    the mode's, never guessed from the pixels: I;16* and I are 16-bit (0..65535), F must be
    in [0, 1]; values outside it are an `ImageError`."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        peak = 1.0 if mode == "F" else 65535.0
        if a.size and not (np.isfinite(a).all() and 0 <= a.min() and a.max() <= peak):
            lo, hi = np.nanmin(a), np.nanmax(a)
            raise ImageError(f"mode {mode} pixels must be in [0, {peak:g}] ({'float' if mode == 'F' else '16-bit'}"
                             f" grayscale), got values in [{lo:g}, {hi:g}]"
                             + ("" if np.isfinite(a).all() else " and NaN or inf"))
        notes.append(f"{'32-bit float' if mode == 'F' else '16-bit'} grayscale converted to RGB")
        return np.repeat((a / peak).astype(np.float32)[:, :, None], 3, axis=2)
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
    return np.asarray(im, dtype=np.uint8)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """3 x H x W in [0, 1] (clamped here) -> H x W x 3 uint8, rounded."""
    a = img.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return a.permute(1, 2, 0).cpu().numpy()


_PENDING: set[str] = set()  # temporary files being written now (removed if SIGTERM arrives)
_SWEPT: set[Path] = set()  # folders already cleared of stale temporary files by this process
_TMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)-[a-z0-9_]+\.part$")  # .NAME.PID-RANDOM.part
_LEGACY_TMP_NAME = re.compile(r"^\..+\.(png|pt|safetensors)\.[a-z0-9_]{8}\.part$")  # .NAME.RANDOM.part (no pid)
_STALE_SECONDS = 3600.0


def _on_sigterm(signum, frame, previous=signal.SIG_DFL):
    """Remove our half-written files, then die of SIGTERM as we would have without us."""
    for tmp in list(_PENDING):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _PENDING.clear()
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_cleanup() -> None:
    """SIGINT already raises KeyboardInterrupt (cleaned up below); SIGTERM kills at once, so
    catch it while a file is being written. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current in (signal.SIG_IGN, None) or getattr(current, "func", None) is _on_sigterm:
        return
    signal.signal(signal.SIGTERM, functools.partial(_on_sigterm, previous=current))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_parts(folder: Path) -> list[Path]:
    """Delete temporary files of our naming left in `folder` by a process that died while
    writing (its pid is gone and the file is untouched for a minute; files of the older
    pid-less naming after an hour). Returns what was removed."""
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TMP_NAME.match(e.name)
        if not (m or _LEGACY_TMP_NAME.match(e.name)) or str(Path(folder) / e.name) in _PENDING:
            continue
        try:
            age = now - e.stat(follow_symlinks=False).st_mtime
            stale = (age > 60 and not _alive(int(m["pid"]))) if m else age > _STALE_SECONDS
            if stale and e.is_file(follow_symlinks=False):
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` then rename onto `path`; on any error, Ctrl-C or SIGTERM nothing
    is left behind. The first write into a folder also clears stale temporary files there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent.resolve()
    if folder not in _SWEPT:
        _SWEPT.add(folder)
        for stale in remove_stale_parts(folder):
            logger.info("removed %s, left by an interrupted run", stale)
    _install_sigterm_cleanup()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".part", dir=path.parent)
    os.close(fd)
    _PENDING.add(tmp)
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
    finally:
        _PENDING.discard(tmp)
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
