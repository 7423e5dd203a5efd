"""Image-folder datasets of HR images (PNG/JPEG ...), decoded to uint8 tensors by the package's
one image reader (`flowsr_lp.images`), with an optional in-memory cache and a repeat factor
(an "epoch" then visits each image `repeat` times, as the SR literature counts DIV2K x20)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..images import MAX_DECODE_PIXELS, image_size, images_in, load_rgb_uint8


def find_images(sources: list[str | Path]) -> list[Path]:
    """Files under the given folders (recursively, sorted) or given directly."""
    files: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            files += images_in(src, recursive=True)
        elif src.is_file():
            files.append(src)
        else:
            raise FileNotFoundError(f"{src}: no such image folder or file")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, sources))}")
    return files


class ImageFolder(Dataset):
    """HR images as 3 x H x W uint8 tensors; index i is image i % n_images."""

    def __init__(self, sources: list[str | Path], repeat: int = 1, cache: bool = False, min_side: int = 0):
        files = find_images(sources)
        self.sizes: list[tuple[int, int]] = []
        self.files: list[Path] = []
        for f in files:
            h, w = image_size(f, MAX_DECODE_PIXELS)  # header only: unreadable or huge files fail before training
            if min(h, w) >= min_side:
                self.files.append(f)
                self.sizes.append((h, w))
        if not self.files:
            raise FileNotFoundError(f"no image of at least {min_side} px per side in {', '.join(map(str, sources))}")
        self.repeat = int(repeat)
        self._cache = [load_rgb_uint8(f) for f in self.files] if cache else None

    @property
    def n_images(self) -> int:
        return len(self.files)

    def __len__(self) -> int:
        return self.n_images * self.repeat

    def size(self, i: int) -> tuple[int, int]:
        return self.sizes[i % self.n_images]

    def __getitem__(self, i: int) -> torch.Tensor:
        i %= self.n_images
        return self._cache[i] if self._cache is not None else load_rgb_uint8(self.files[i])
