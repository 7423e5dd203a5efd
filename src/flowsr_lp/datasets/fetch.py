"""Resumable downloads into ROOT/downloads/ with sha256 checks.

A file is fetched into `X.part` with HTTP Range requests (an interrupted download continues where it
stopped, on a retry or on the next run) and renamed to `X` only once it is complete and verified.
Checksums: a registry entry's published sha256 is checked when there is one. Where there is none,
the check is trust on first use: the sha256 of the first complete download (or of a file first seen
in ROOT/downloads/) is recorded in ROOT/.checksums.json, and every later use of the file is checked
against that record.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from .registry import DataError, Dataset, RemoteFile, resolve

RETRIES = 5          # consecutive failed tries without progress before giving up
BACKOFF_S = 2.0      # wait before retry k: BACKOFF_S * 2**k, capped at 60 s
TIMEOUT_S = 60.0     # socket timeout
CHUNK = 1 << 20
CHECKSUMS = ".checksums.json"

log = logging.getLogger(__name__)


def say(msg: str) -> None:
    """A progress message, on the package's log (the command line shows it on stderr)."""
    log.info(msg)


def downloads_dir(root: Path | str) -> Path:
    return Path(root) / "downloads"


# ---- checksums -------------------------------------------------------------------------------------

def load_checksums(root: Path | str) -> dict:
    path = Path(root) / CHECKSUMS
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}); fix or delete it") from None


def _record(root: Path, entry: RemoteFile, digest: str, size: int, source: str) -> None:
    table = load_checksums(root)
    table[entry.name] = {"sha256": digest, "size": size, "source": source,
                         "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    path = root / CHECKSUMS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _update(h, path: Path, progress: bool) -> None:
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, desc=f"sha256 {path.name}", unit="B",
                                     unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False,
                                     disable=not progress) as bar:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))


def sha256_file(path: Path, progress: bool = True) -> str:
    h = hashlib.sha256()
    _update(h, path, progress)
    return h.hexdigest()


def verify(entry: RemoteFile, root: Path | str, path: Path, digest: str | None = None, progress: bool = True,
           source: str = "a file found in downloads/") -> str:
    """Check `path` against the published or recorded sha256; record it where there is neither."""
    root = Path(root)
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise DataError(f"{path}: {size} bytes, expected {entry.size}: the file is incomplete or not the "
                        f"published one; delete it and download again")
    digest = digest or sha256_file(path, progress)
    expected, origin = entry.sha256, "published"
    if expected is None and entry.name in (table := load_checksums(root)):
        expected, origin = table[entry.name]["sha256"], f"recorded on first use in {root / CHECKSUMS}"
    if expected is None:
        _record(root, entry, digest, size, source)
        say(f"{entry.name}: no published sha256; trust on first use: recorded sha256 {digest} in "
            f"{root / CHECKSUMS}, later uses are checked against it")
    elif digest.lower() != expected.lower():
        raise DataError(f"{path}: sha256 mismatch: got {digest}, expected {expected} ({origin})")
    return digest


# ---- HTTP ------------------------------------------------------------------------------------------

class _Offline(Exception):
    """The server could not be reached at all (no network, DNS failure, connection refused)."""


class _Transient(Exception):
    """A try that failed in a way worth retrying; `connecting`: the server never answered."""

    def __init__(self, reason: str, connecting: bool):
        super().__init__(reason)
        self.connecting = connecting


_NET_ERRORS = (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException)


def _reason(e: BaseException) -> str:
    e = getattr(e, "reason", e)
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _open(url: str, offset: int, validator: str | None):
    headers = {"User-Agent": "flowsr-lp (urllib)", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:  # the server sends the whole file instead if it changed since the first try
            headers["If-Range"] = validator
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416:
            return e
        if e.code in (408, 429) or e.code >= 500:
            raise _Transient(f"HTTP {e.code} {e.reason}", connecting=False) from None
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError, ConnectionResetError, ConnectionAbortedError)):
            raise _Transient(_reason(e), connecting=True) from None
        if isinstance(e.reason, ssl.SSLError) or not isinstance(e.reason, OSError):
            raise DataError(f"{url}: {_reason(e)}") from None
        raise _Offline(_reason(e)) from None  # DNS failure, no route, connection refused
    except _NET_ERRORS as e:
        raise _Transient(_reason(e), connecting=True) from None


def _offline(url: str, reason: str, root: Path, name: str) -> DataError:
    host = urllib.parse.urlsplit(url).netloc or url
    return DataError(f"cannot reach {host} ({reason}): offline? download {url} by hand into "
                     f"{downloads_dir(root)}/ and run `flowsr-lp data prepare {name}`")


def _hash_part(part: Path, progress: bool):
    h = hashlib.sha256()
    _update(h, part, progress)
    return h


def _fetch_once(url: str, part: Path, meta: Path, entry: RemoteFile, progress: bool) -> str:
    """One try: continue `part`; return its sha256 once complete. Raises _Transient on a broken try."""
    offset = part.stat().st_size if part.exists() else 0
    validator = json.loads(meta.read_text()).get("validator") if offset and meta.exists() else None
    with _open(url, offset, validator) as resp:
        if resp.status == 416:  # nothing left to send: complete already, or a part that does not fit
            total = resp.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return _hash_part(part, progress).hexdigest()
            part.unlink()
            raise _Transient("server cannot resume this partial file; starting again", connecting=False)
        if resp.status == 206:
            span, _, total = resp.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
            if not span.startswith(f"{offset}-"):
                raise DataError(f"{url}: server sent range {span!r} for a request from byte {offset}")
            total = int(total) if total.isdigit() else None
        else:  # 200: the whole file (no range support, or it changed since the first try)
            offset = 0
            v = resp.headers.get("ETag") or ""
            meta.write_text(json.dumps({"url": url, "validator": v if v and not v.startswith("W/")
                                        else resp.headers.get("Last-Modified")}))
            length = resp.headers.get("Content-Length") or ""
            total = int(length) if length.isdigit() else None
        if entry.size is not None and total is not None and total != entry.size:
            raise DataError(f"{url}: server offers {total} bytes, expected {entry.size}: not the published file")
        if total is not None and shutil.disk_usage(part.parent).free < total - offset:
            raise DataError(f"not enough free space in {part.parent} for {entry.name} "
                            f"({total - offset} more bytes)")
        h = _hash_part(part, progress) if offset else hashlib.sha256()
        done = offset
        with open(part, "ab" if offset else "wb") as f, \
                tqdm(total=total, initial=offset, desc=entry.name, unit="B", unit_scale=True, unit_divisor=1024,
                     file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (*_NET_ERRORS, OSError) as e:
                    raise _Transient(f"connection broke at byte {done}: {_reason(e)}", connecting=False) from None
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                done += len(chunk)
                bar.update(len(chunk))
        if total is not None and done < total:
            raise _Transient(f"connection closed at byte {done} of {total}", connecting=False)
        return h.hexdigest()


def fetch(entry: RemoteFile, root: Path | str, name: str, mirror: str | None = None, progress: bool = True) -> Path:
    """Make ROOT/downloads/FILE complete and verified, downloading (or resuming) it where needed."""
    root = Path(root)
    dest = downloads_dir(root) / entry.name
    part, meta = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    url = entry.url(mirror)
    if dest.exists():
        verify(entry, root, dest, progress=progress)
        say(f"{entry.name}: already downloaded, sha256 ok")
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if part.exists():
        say(f"{entry.name}: resuming {url} from byte {part.stat().st_size}")
    else:
        say(f"{entry.name}: downloading {url}")
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            digest = _fetch_once(url, part, meta, entry, progress)
            break
        except _Offline as e:
            raise _offline(url, str(e), root, name) from None
        except _Transient as e:
            progressed = part.exists() and part.stat().st_size > before
            failures = 1 if progressed else failures + 1
            if failures > RETRIES:
                if e.connecting:
                    raise _offline(url, str(e), root, name) from None
                again = f"run again to resume from {part}" if part.exists() else "run again to retry"
                raise DataError(f"{url}: download failed after {RETRIES + 1} tries ({e}); {again}") from None
            wait = min(BACKOFF_S * 2 ** (failures - 1), 60.0)
            say(f"{entry.name}: {e}; retrying in {wait:.0f} s")
            time.sleep(wait)
    try:
        verify(entry, root, part, digest, progress, source=url)
    except DataError as e:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        raise DataError(f"{e}; the download was removed, run again to download it afresh") from None
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    return dest


def download(name: str, root: Path | str = "data", mirror: str | None = None, progress: bool = True,
             registry: dict[str, Dataset] | None = None, skip: set[str] | None = None) -> list[Path]:
    """Download the archives of data set `name` into ROOT/downloads/ (resumable, verified; see the module
    docstring for trust-on-first-use checksums). `mirror` replaces every file's base URL. Files already
    complete are verified, not downloaded again; file names in `skip` (already handled by the caller) are
    left alone. Returns the archive paths."""
    ds = resolve(name, registry)
    return [fetch(f, root, ds.name, mirror, progress) if f.name not in (skip or ())
            else downloads_dir(root) / f.name for f in ds.files]
