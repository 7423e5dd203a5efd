"""`prepare`: unpack verified archives from ROOT/downloads/ into the standard layout.

Each target folder is extracted into a temporary folder under ROOT and renamed into place only when
the whole archive has been read, so a folder that exists is complete; on any error nothing is left
behind. Members with absolute paths or `..` refuse the whole archive; links are not extracted.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from ..downloader import CHUNK
from .fetch import downloads_dir, say, verify
from .registry import DataError, Dataset, Target, resolve


def _parts(archive: str, name: str) -> list[str]:
    """The path components of member `name`; refuses absolute paths and `..`."""
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"[A-Za-z]:", n) or ".." in n.split("/"):
        raise DataError(f"{archive}: refusing unsafe member {name!r} (absolute path or '..'); nothing extracted")
    return [p for p in n.split("/") if p not in ("", ".")]


def _members(path: Path):
    """Yield (name, kind, open) per member; kind is 'file', 'dir' or 'other' (links, devices)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                yield info.filename, "dir" if info.is_dir() else "file", lambda info=info: z.open(info)
        return
    try:
        tf = tarfile.open(path, "r:*")
    except tarfile.TarError as e:
        raise DataError(f"{path}: neither a zip nor a tar archive ({' '.join(str(e).split())})") from None
    with tf:
        for m in tf:
            kind = "file" if m.isfile() else "dir" if m.isdir() else "other"
            yield m.name, kind, lambda m=m: tf.extractfile(m)


def _extract(path: Path, targets: list[Target], root: Path, progress: bool) -> None:
    prefixes = [_parts(path.name, t.member) for t in targets]
    counts, tops = [0] * len(targets), set()
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=root))
    try:
        with tqdm(desc=f"extract {path.name}", unit=" files", file=sys.stderr, disable=not progress) as bar:
            for name, kind, open_member in _members(path):
                parts = _parts(path.name, name)
                tops.update(parts[:1])
                i = next((i for i, p in enumerate(prefixes) if parts[:len(p)] == p and len(parts) > len(p)), None)
                if i is None:
                    continue
                out = tmp.joinpath(str(i), *parts[len(prefixes[i]):])
                if kind == "dir":
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                if kind != "file":
                    raise DataError(f"{path.name}: refusing member {name!r} (links and special files are not "
                                    f"extracted); nothing extracted")
                out.parent.mkdir(parents=True, exist_ok=True)
                with open_member() as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                counts[i] += 1
                bar.update()
        for t, n in zip(targets, counts):
            if not n:
                raise DataError(f"{path}: no files under {t.member}/ (top-level entries: "
                                f"{', '.join(sorted(tops)[:5]) or 'none'}); is it the right archive?")
        for i, (t, n) in enumerate(zip(targets, counts)):
            dest = root / t.dest
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp / str(i), dest)
            say(f"{dest}: {n} files")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: damaged archive ({e}); delete it and download again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_prepared(target: Target, root: Path | str) -> bool:
    return (Path(root) / target.dest).is_dir()


def prepare(name: str, root: Path | str = "data", progress: bool = True,
            registry: dict[str, Dataset] | None = None, verified: set[str] | None = None) -> list[Path]:
    """Extract data set `name` from ROOT/downloads/ into its folders under ROOT (see `registry.py`), after
    checking each archive's sha256 (published, or recorded on first use in ROOT/.checksums.json).
    Archive names in `verified` were checked by the caller already (a download, or an earlier
    data set sharing the archive); those checked here are added to it. Folders already present
    are kept as they are. Returns the data set's folders."""
    ds, root = resolve(name, registry), Path(root)
    todo = [t for t in ds.targets if not is_prepared(t, root)]
    for t in ds.targets:
        if t not in todo:
            say(f"{root / t.dest}: already prepared (delete it to extract again)")
    missing = [a for a in dict.fromkeys(t.archive for t in todo) if not (downloads_dir(root) / a).is_file()]
    if missing:
        listed = ", ".join(f"{a} ({ds.file(a).url()}"
                           + (", partly downloaded" if (downloads_dir(root) / f"{a}.part").exists() else "") + ")"
                           for a in missing)
        raise DataError(f"{ds.name}: missing in {downloads_dir(root)}/: {listed}; run `flowsr-lp data download "
                        f"{ds.name}` or download by hand into that folder")
    for archive in dict.fromkeys(t.archive for t in todo):
        path = downloads_dir(root) / archive
        if verified is None or archive not in verified:
            verify(ds.file(archive), root, path, progress=progress)
            if verified is not None:
                verified.add(archive)
        _extract(path, [t for t in todo if t.archive == archive], root, progress)
    return [root / t.dest for t in ds.targets]
