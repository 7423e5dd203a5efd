"""What can be downloaded: data set name -> remote files and where `prepare` puts their contents.

Sizes and sha256 digests are only filled in where they were actually computed from the real files;
`None` means unknown. Files without a published digest are checked by trust on first use (see
`fetch.py`). Maintainers: paste the digest from `sha256sum FILE` (or from a user's
`.checksums.json`) into the entry's `sha256=` to make the check strict for everyone.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError

DIV2K_BASE = "https://data.vision.ee.ethz.ch/cvl/DIV2K"
EDSR_BASE = "https://cv.snu.ac.kr/research/EDSR"


@dataclass(frozen=True)
class RemoteFile:
    path: str                   # relative to the base URL; also the file name in ROOT/downloads/
    base: str                   # default base URL (`mirror` replaces it)
    size: int | None = None     # bytes, where known
    sha256: str | None = None   # hex digest, where known; else trust on first use

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def url(self, mirror: str | None = None) -> str:
        return f"{(mirror or self.base).rstrip('/')}/{self.path}"


@dataclass(frozen=True)
class Target:
    """The folder `member` inside archive `archive` becomes ROOT/`dest`."""
    archive: str
    member: str
    dest: str


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    files: tuple[RemoteFile, ...]
    targets: tuple[Target, ...]

    def file(self, name: str) -> RemoteFile:
        return next(f for f in self.files if f.name == name)


def _div2k(hr: bool = True, lr: bool = True) -> tuple[tuple[RemoteFile, ...], tuple[Target, ...]]:
    files, targets = [], []
    for split in ("train", "valid"):
        if hr:
            files.append(RemoteFile(f"DIV2K_{split}_HR.zip", DIV2K_BASE))
            targets.append(Target(files[-1].name, f"DIV2K_{split}_HR", f"DIV2K/DIV2K_{split}_HR"))
        for s in (2, 3, 4) if lr else ():
            files.append(RemoteFile(f"DIV2K_{split}_LR_bicubic_X{s}.zip", DIV2K_BASE))
            member = f"DIV2K_{split}_LR_bicubic/X{s}"
            targets.append(Target(files[-1].name, member, f"DIV2K/{member}"))
    return tuple(files), tuple(targets)


BENCHMARK_SETS = ("Set5", "Set14", "B100", "Urban100")
_BENCHMARK_TAR = RemoteFile("benchmark.tar", EDSR_BASE)


def _benchmark(sets: tuple[str, ...]) -> tuple[tuple[RemoteFile, ...], tuple[Target, ...]]:
    return (_BENCHMARK_TAR,), tuple(Target("benchmark.tar", f"benchmark/{s}", f"benchmark/{s}") for s in sets)


def _build() -> dict[str, Dataset]:
    sets = [
        Dataset("DIV2K", "DIV2K 800 train + 100 valid images: HR and the official LR bicubic x2/x3/x4", *_div2k()),
        Dataset("DIV2K-HR", "DIV2K 800 train + 100 valid images: HR only", *_div2k(lr=False)),
        Dataset("Flickr2K", "Flickr2K 2650 images: HR only (the archive's LR folders are not extracted)",
                (RemoteFile("Flickr2K.tar", EDSR_BASE),),
                (Target("Flickr2K.tar", "Flickr2K/Flickr2K_HR", "Flickr2K/Flickr2K_HR"),)),
        Dataset("benchmark", "Set5, Set14, B100, Urban100: HR and LR bicubic x2/x3/x4 (EDSR benchmark pack)",
                *_benchmark(BENCHMARK_SETS)),
    ]
    sets += [Dataset(s, f"{s} only, from the EDSR benchmark pack (same download as `benchmark`)",
                     *_benchmark((s,))) for s in BENCHMARK_SETS]
    return {d.name: d for d in sets}


REGISTRY: dict[str, Dataset] = _build()


def resolve(name: str, registry: dict[str, Dataset] | None = None) -> Dataset:
    """Look a data set up by name, ignoring case."""
    registry = REGISTRY if registry is None else registry
    for key, ds in registry.items():
        if key.lower() == name.lower():
            return ds
    raise DataError(f"unknown data set {name!r} (known: {', '.join(registry)})")
