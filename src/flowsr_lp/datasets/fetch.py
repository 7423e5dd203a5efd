"""Data set archives into ROOT/downloads/, through the package's downloader (`flowsr_lp.downloader`).

A file is fetched into `X.part` with HTTP Range requests (an interrupted download continues where it
stopped, on a retry or on the next run) and renamed to `X` only once it is complete and verified.
Checksums: a registry entry's published sha256 is checked when there is one. Where there is none,
the check is trust on first use: the sha256 of the first complete download (or of a file first seen
in ROOT/downloads/) is recorded in ROOT/.checksums.json, and every later use of the file is checked
against that record.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from ..downloader import ChecksumTable, DiskFull, Unreachable, accept, discard, part_of
from ..downloader import download as download_url
from ..downloader import verify as verify_file
from ..errors import DownloadError
from .registry import DataError, Dataset, RemoteFile, resolve

RETRIES = 5          # consecutive failed tries without progress before giving up
BACKOFF_S = 2.0      # wait before retry k: BACKOFF_S * 2**(k - 1), at most 60 s
TIMEOUT_S = 60.0     # socket timeout
CHECKSUMS = ".checksums.json"

log = logging.getLogger(__name__)


def say(msg: str) -> None:
    """A progress message, on the package's log (the command line shows it on stderr)."""
    log.info(msg)


def downloads_dir(root: Path | str) -> Path:
    return Path(root) / "downloads"


@contextlib.contextmanager
def _as_data_error(by_hand: str = ""):
    """The downloader's errors as one-line DataErrors; `by_hand`: what to do when offline."""
    try:
        yield
    except Unreachable as e:
        raise DataError(f"{e} {by_hand}".strip()) from None
    except DiskFull as e:
        raise DataError(f"{e}; free some space or use another data root") from None
    except DownloadError as e:
        raise DataError(str(e)) from None


def _policy(entry: RemoteFile, root: Path, path: Path, source: str):
    """(expected checksum, where it comes from, how to record one on first use) for `entry`."""
    table = ChecksumTable(root / CHECKSUMS)
    if entry.sha256:
        expected, origin = f"sha256:{entry.sha256}", "published"
    else:
        expected, origin = table.get(entry.name), f"recorded on first use in {table.path}"
    return expected, origin, lambda sha256: table.put(entry.name, sha256, source, size=path.stat().st_size)


def verify(entry: RemoteFile, root: Path | str, path: Path, progress: bool = True,
           source: str = "a file found in downloads/") -> None:
    """Check `path` against the published or recorded sha256; record it where there is neither."""
    expected, origin, first_use = _policy(entry, Path(root), path, source)
    with _as_data_error():
        verify_file(path, expected, first_use, size=entry.size, origin=origin, progress=progress)


def fetch(entry: RemoteFile, root: Path | str, name: str, mirror: str | None = None, progress: bool = True) -> Path:
    """Make ROOT/downloads/FILE complete and verified, downloading (or resuming) it where needed."""
    root = Path(root)
    dest = downloads_dir(root) / entry.name
    part, url = part_of(dest), entry.url(mirror)
    if dest.exists():
        verify(entry, root, dest, progress=progress)
        say(f"{entry.name}: already downloaded, sha256 ok")
        discard(part)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    say(f"{entry.name}: resuming {url} from byte {part.stat().st_size}" if part.exists()
        else f"{entry.name}: downloading {url}")
    with _as_data_error(f"download {url} by hand into {downloads_dir(root)}/ and run `flowsr-lp data prepare {name}`"):
        sha256 = download_url(url, part, retries=RETRIES, backoff_s=BACKOFF_S, timeout_s=TIMEOUT_S,
                              size=entry.size, progress=progress)
        expected, origin, first_use = _policy(entry, root, part, url)
        return accept(part, dest, expected, first_use, size=entry.size, origin=origin, progress=progress,
                      sha256=sha256)


def download(name: str, root: Path | str = "data", mirror: str | None = None, progress: bool = True,
             registry: dict[str, Dataset] | None = None, skip: set[str] | None = None) -> list[Path]:
    """Download the archives of data set `name` into ROOT/downloads/ (resumable, verified; see the module
    docstring for trust-on-first-use checksums). `mirror` replaces every file's base URL. Files already
    complete are verified, not downloaded again; file names in `skip` (already handled by the caller) are
    left alone. Returns the archive paths."""
    ds = resolve(name, registry)
    return [fetch(f, root, ds.name, mirror, progress) if f.name not in (skip or ())
            else downloads_dir(root) / f.name for f in ds.files]
