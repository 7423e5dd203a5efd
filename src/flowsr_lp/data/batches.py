"""Reproducible batches. Batch b of epoch e is built from generators seeded by
(seed, e, b) and (seed, e, b, item): the same whatever the number of data-loader workers,
so a resumed run sees exactly the batches an uninterrupted one would, and the ranks of a
distributed run each build their slice of the same global batch."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .folders import ImageFolder

_MIX = 0x9E3779B97F4A7C15


def mix_seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p) + _MIX) % (1 << 63)
    return h


class EpochBatches(Dataset):
    def __init__(self, images: ImageFolder, crops, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world} processes")
        if len(images) < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {len(images)} training items")
        self.images, self.crops, self.batch_size = images, crops, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __getitem__(self, b: int) -> dict:
        idx = self.order[b * self.batch_size : (b + 1) * self.batch_size].tolist()
        min_side = min(min(self.images.size(i)) for i in idx)
        per_rank = self.batch_size // self.world
        mine = range(self.rank * per_rank, (self.rank + 1) * per_rank)
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, b))
        item_gens = [torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, b, j)) for j in mine]
        return self.crops([self.images[idx[j]] for j in mine], min_side, gen, item_gens)
