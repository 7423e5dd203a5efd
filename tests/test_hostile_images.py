"""Hostile image files against the package's one reader (issue 11, items 3, 10, 11, 14):
sizes are checked from the header before decoding, every failure is one ImageError line,
16-bit grayscale and EXIF orientation are honoured everywhere, and an interrupted write
leaves nothing behind."""
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from flowsr_lp.data.folders import ImageFolder
from flowsr_lp.images import (ImageError, atomic_write, image_size, load_rgb_uint8, read_image,
                              remove_stale_parts, write_png)

from helpers import write_png16


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(path, w: int, h: int) -> None:
    """A tiny PNG whose header declares w x h gray pixels (the IDAT holds a few rows only)."""
    idat = zlib.compress(b"\x00" * (w + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


@pytest.fixture
def bomb(tmp_path):
    path = tmp_path / "bomb.png"
    _bomb_png(path, 12000, 12000)
    assert path.stat().st_size < 200_000
    return path


@pytest.mark.parametrize("reader", [read_image, load_rgb_uint8], ids=["read_image", "load_rgb_uint8"])
def test_a_declared_12000x12000_png_is_refused_before_decoding(bomb, reader):
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="12000x12000 is 144.0 MP, over the limit") as info:
            reader(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6 and "\n" not in str(info.value)


def test_image_folder_refuses_a_bomb_before_training(bomb):
    with pytest.raises(ImageError, match="over the limit"):
        ImageFolder([bomb.parent])


def test_pil_decompression_bomb_error_is_one_image_error(tmp_path):
    path = tmp_path / "huge.png"
    _bomb_png(path, 20000, 20000)  # over twice PIL's MAX_IMAGE_PIXELS: PIL itself refuses at open
    with pytest.raises(ImageError) as info:
        read_image(path, max_pixels=None)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_the_limit_can_be_lifted_and_lowered(tmp_path):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png", max_pixels=None)[0].shape == (3, 40, 50)
    with pytest.raises(ImageError, match="over the limit"):
        read_image(tmp_path / "a.png", max_pixels=1999)
    assert image_size(tmp_path / "a.png") == (40, 50)


def _png_bytes(tmp_path) -> bytes:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    return (tmp_path / "ok.png").read_bytes()


BAD_FILES = {
    "empty": lambda d: b"",
    "text": lambda d: b"hello, I am not a picture\n" * 3,
    "truncated-png": lambda d: _png_bytes(d)[:200],
    "png-signature-only": lambda d: b"\x89PNG\r\n\x1a\n",
    "zero-width-ihdr": lambda d: b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)),
    "bad-crc": lambda d: _png_bytes(d)[:29] + b"\x00\x00\x00\x00" + _png_bytes(d)[33:],
    "jpeg-header-only": lambda d: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "random-bytes": lambda d: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
}


@pytest.mark.parametrize("reader", [read_image, load_rgb_uint8, image_size], ids=["float", "uint8", "size"])
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_files_are_one_line_image_errors(tmp_path, kind, reader):
    path = tmp_path / f"{kind}.png"
    path.write_bytes(BAD_FILES[kind](tmp_path))
    try:
        reader(path)
    except ImageError as e:
        assert str(path) in str(e) and "\n" not in str(e)
    else:  # a lazily-read header may be fine; decoding must not be
        assert reader is image_size and kind in ("truncated-png", "bad-crc")


@pytest.mark.parametrize("make", ["missing", "directory", "symlink-loop", "dangling-symlink"])
def test_paths_that_are_not_files(tmp_path, make):
    path = tmp_path / "x.png"
    if make == "directory":
        path.mkdir()
    elif make == "symlink-loop":
        os.symlink(path, path)
    elif make == "dangling-symlink":
        os.symlink(tmp_path / "gone.png", path)
    for reader in (read_image, load_rgb_uint8, image_size):
        with pytest.raises(ImageError, match="no such file"):
            reader(path)


def test_16_bit_grayscale_is_read_alike_by_every_reader(tmp_path):
    ramp = np.linspace(0, 65535, 40 * 30).reshape(40, 30, 1).astype(np.uint16)
    write_png16(tmp_path / "g16.png", ramp)
    u8 = load_rgb_uint8(tmp_path / "g16.png")  # used by training, evaluate, temperature-map
    expect = torch.from_numpy(np.round(ramp[..., 0] / 65535 * 255).astype(np.uint8))
    assert all(torch.equal(u8[c], expect) for c in range(3))  # was all 255 (white)
    f, notes = read_image(tmp_path / "g16.png")
    assert (f * 255 - u8.float()).abs().max() <= 0.5 and any("16-bit" in n for n in notes)
    folder = ImageFolder([tmp_path])
    assert torch.equal(folder[0], u8)


ORIENTATION = {1: lambda a: a, 3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, -1),
               8: lambda a: np.rot90(a, 1), 2: lambda a: a[:, ::-1], 5: lambda a: np.transpose(a, (1, 0, 2))}


@pytest.mark.parametrize("orientation", sorted(ORIENTATION))
def test_exif_orientation_is_honoured(tmp_path, orientation):
    stored = np.zeros((20, 36, 3), np.uint8)
    stored[:10, :12] = 255  # a white block top-left in the stored pixels
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"  # lossless, so pixels can be compared exactly
    im.save(path, exif=exif)
    upright = np.ascontiguousarray(ORIENTATION[orientation](stored))
    u8 = load_rgb_uint8(path)
    assert tuple(u8.shape[1:]) == upright.shape[:2] == image_size(path)
    assert torch.equal(u8, torch.from_numpy(upright).permute(2, 0, 1))
    f, notes = read_image(path)
    assert torch.equal((f * 255).round().to(torch.uint8), u8)
    assert any("EXIF" in n for n in notes) == (orientation != 1)


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:, :8] = 255  # white band on the left as stored; orientation 6 turns it to the top
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "p.jpg", exif=exif, quality=95)
    u8 = load_rgb_uint8(tmp_path / "p.jpg")
    assert u8.shape == (3, 40, 24)
    assert u8[:, :8].float().mean() > 200 and u8[:, -8:].float().mean() < 50


# ---- writes --------------------------------------------------------------------------------
def test_a_failed_write_leaves_nothing(tmp_path):
    def boom(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "x.png", boom)
    assert os.listdir(tmp_path) == []


SIGTERM_WRITER = textwrap.dedent("""
    import sys, time
    from flowsr_lp.images import atomic_write
    def slow(tmp):
        open(tmp, "wb").write(b"partial")
        print("writing", flush=True)
        for _ in range(600):
            time.sleep(0.05)
    atomic_write(sys.argv[1], slow)
""")


@pytest.mark.slow
def test_sigterm_during_a_write_leaves_no_part_file(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_WRITER, str(tmp_path / "out.png")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert any(n.endswith(".part") for n in os.listdir(tmp_path))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM  # still dies of SIGTERM, as without us
    assert os.listdir(tmp_path) == []


def test_stale_parts_of_our_naming_are_removed_on_the_next_run(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 7200
    stale = [tmp_path / f".a.png.{dead.pid}-x1y2z3w4.part", tmp_path / ".b.png.k2j4h6g8.part"]
    keep = [tmp_path / f".c.png.{os.getpid()}-abcdefgh.part",  # a live writer (this process)
            tmp_path / "notes.part", tmp_path / ".hidden", tmp_path / "d.png"]
    for p in stale + keep:
        p.write_bytes(b"x")
        os.utime(p, (old, old))
    write_png(torch.rand(3, 8, 8), tmp_path / "e.png")
    names = set(os.listdir(tmp_path))
    assert not any(p.name in names for p in stale)
    assert all(p.name in names for p in keep) and "e.png" in names
    assert remove_stale_parts(tmp_path) == []


def test_a_fresh_part_of_a_dead_process_is_kept_for_a_minute(tmp_path):
    p = tmp_path / ".a.png.999999999-abcdefgh.part"
    p.write_bytes(b"x")
    assert remove_stale_parts(tmp_path) == [] and p.exists()
