"""The package's one downloader: a file is fetched over HTTP(S) into `NAME.part` beside its
final name (Range requests resume it, on a retry or on the next run), checked against its
checksum, and only then renamed to `NAME`; a wrong checksum deletes it. Callers keep their own
policy: where files go, which checksum is expected, what an error should suggest
(`hub/download.py` for models, `datasets/fetch.py` for data sets).

`NAME.part.json` remembers the server's ETag / Last-Modified, so a resumed download asks for
the rest only of that same version (If-Range) and starts again if the file changed. Where no
checksum is published, the sha256 of the first complete download is recorded in a
`ChecksumTable` (trust on first use) and later uses are checked against it.
"""
from __future__ import annotations

import contextlib
import errno
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
from typing import Callable

from tqdm import tqdm

from .errors import DownloadError
from .runtime import progress_bars  # off under the command line's -q

log = logging.getLogger(__name__)
CHUNK = 1 << 20
MAX_WAIT_S = 60.0  # the longest wait between two tries


class Unreachable(DownloadError):
    """The host could not be reached at all (offline, DNS failure, connection refused)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot reach {urllib.parse.urlsplit(url).netloc or url} ({reason}): offline?")


class Refused(DownloadError):
    """The server answered with an HTTP error that retrying will not fix (404, 403, ...)."""


class DiskFull(DownloadError):
    """Not enough room for the download (callers add where to make room)."""


class _Retry(Exception):
    """A try that broke in a way worth retrying; `connecting`: the server never answered."""

    def __init__(self, reason: str, connecting: bool = False):
        super().__init__(reason)
        self.connecting = connecting


_NET_ERRORS = (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException)


# ---- checksums -------------------------------------------------------------------------------------

_HASHERS = {"sha256": lambda size: hashlib.sha256(), "git-sha1": lambda size: hashlib.sha1(b"blob %d\0" % size)}


def digests(path: Path, progress: bool = False, algorithms=tuple(_HASHERS)) -> dict[str, str]:
    """{algorithm: hex} of a file for each of `algorithms` ('sha256', 'git-sha1': the git blob
    id, sha1 of b'blob <size>\\0' + content), in one pass; only those asked for are computed."""
    size = path.stat().st_size
    hashers = {a: _HASHERS[a](size) for a in algorithms}
    with open(path, "rb") as f, tqdm(total=size, desc=f"{'/'.join(algorithms)} {path.name}", unit="B", unit_scale=True,
                                     unit_divisor=1024, file=sys.stderr, leave=False,
                                     disable=not (progress and progress_bars())) as bar:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
            bar.update(len(chunk))
    return {a: h.hexdigest() for a, h in hashers.items()}


def check(path: Path, expected: str, what: str, origin: str | None = None, progress: bool = False) -> None:
    """Raise DownloadError unless `path` has the checksum `expected` ('<algorithm>:<hex>');
    `origin` says where `expected` comes from (published, recorded ...)."""
    algo, _, want = expected.partition(":")
    _compare(algo, digests(path, progress, (algo,))[algo], want, what, origin)


def _compare(algo: str, got: str, want: str, what: str, origin: str | None) -> None:
    if got != want.lower():
        raise DownloadError(f"{what}: {algo} mismatch: expected {want}{f' ({origin})' if origin else ''}, "
                            f"got {got}")


class ChecksumTable:
    """A JSON file of sha256 digests recorded on first download (trust on first use), by key."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise DownloadError(f"{self.path}: unreadable ({e}); fix or delete it") from None

    def get(self, key: str) -> str | None:
        """The 'sha256:<hex>' recorded under `key`, or None."""
        entry = self._read().get(key)
        return f"sha256:{entry['sha256']}" if entry else None

    def put(self, key: str, sha256: str, source: str, **extra) -> None:
        """Record `sha256` under `key` (atomically) and say so."""
        table = self._read()
        table[key] = {"sha256": sha256, **extra, "source": source,
                      "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)
        log.warning("%s: no published checksum; trust on first use: recorded sha256 %s in %s (unverified: later "
                    "uses are checked against it)", key.rsplit("/", 1)[-1], sha256, self.path)


# ---- writing ---------------------------------------------------------------------------------------

def part_of(dest: Path) -> Path:
    """Where `dest` is written until it is complete and verified."""
    return dest.with_name(dest.name + ".part")


def _meta(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def discard(part: Path) -> None:
    """Delete a partial download and what is remembered about it."""
    part.unlink(missing_ok=True)
    _meta(part).unlink(missing_ok=True)


@contextlib.contextmanager
def writing(part: Path):
    """Turn a full disk (or another write failure) into one DownloadError; a full disk also
    deletes the partial file to give the space back."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            discard(part)
            raise DiskFull(f"disk full while writing {part.name} in {part.parent}") from None
        raise DownloadError(f"{part}: cannot write ({e.strerror or e})") from None


def _write(f, chunk: bytes) -> None:
    f.write(chunk)


def copy(src, part: Path) -> str:
    """Write the readable binary stream `src` to `part`; returns its sha256."""
    h = hashlib.sha256()
    with writing(part), open(part, "wb") as out:
        while chunk := src.read(CHUNK):
            _write(out, chunk)
            h.update(chunk)
    return h.hexdigest()


class _RunningHash:
    """The sha256 of a `.part` file's first `pos` bytes, kept while it is being written."""

    def __init__(self):
        self.h, self.pos = hashlib.sha256(), 0

    def start_at(self, part: Path, offset: int) -> None:
        """Continue from byte `offset` of `part` (rehashing its prefix when not already here)."""
        if self.pos == offset:
            return
        self.h, self.pos = hashlib.sha256(), 0
        if offset:
            with open(part, "rb") as f:
                while self.pos < offset and (chunk := f.read(min(CHUNK, offset - self.pos))):
                    self.update(chunk)

    def update(self, chunk: bytes) -> None:
        self.h.update(chunk)
        self.pos += len(chunk)


def verify(path: Path, expected: str | None, first_use: Callable[[str], None], *, size: int | None = None,
           what: str | None = None, origin: str | None = None, progress: bool = False,
           sha256: str | None = None) -> None:
    """Check `path` against its size (where known) and the checksum `expected` ('<algo>:<hex>';
    `origin`: where it comes from); without one, `first_use(sha256)` records its digest.
    `sha256`: the file's digest when already known (hashed while downloading): not read again."""
    what = what or str(path)
    if size is not None and (got := path.stat().st_size) != size:
        raise DownloadError(f"{what}: {got} bytes, expected {size}: incomplete, or not the published file")
    if sha256 is None and (not expected or expected.startswith("sha256:")):
        sha256 = digests(path, progress, ("sha256",))["sha256"]
    if not expected:
        first_use(sha256)
    elif expected.startswith("sha256:"):
        _compare("sha256", sha256, expected.partition(":")[2], what, origin)
    else:
        check(path, expected, what, origin, progress)


def accept(part: Path, dest: Path, expected: str | None, first_use: Callable[[str], None], *,
           size: int | None = None, origin: str | None = None, progress: bool = False,
           sha256: str | None = None) -> Path:
    """Move a complete `part` to `dest` once `verify` passes; otherwise delete it."""
    try:
        verify(part, expected, first_use, size=size, what=str(dest), origin=origin, progress=progress, sha256=sha256)
    except DownloadError as e:
        discard(part)
        raise DownloadError(f"{e}; the download was deleted, run again to download it afresh") from None
    os.replace(part, dest)
    _meta(part).unlink(missing_ok=True)
    return dest


# ---- HTTP ------------------------------------------------------------------------------------------

def _reason(e: BaseException) -> str:
    e = getattr(e, "reason", e)
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _open(url: str, offset: int, validator: str | None, timeout_s: float):
    headers = {"User-Agent": "flowsr-lp", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:  # the server sends the whole file instead if it changed since the first try
            headers["If-Range"] = validator
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return e
        if e.code in (408, 429) or e.code >= 500:
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise Refused(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError, ConnectionResetError, ConnectionAbortedError)):
            raise _Retry(_reason(e), connecting=True) from None
        if isinstance(e.reason, ssl.SSLError) or not isinstance(e.reason, OSError):
            raise DownloadError(f"{url}: {_reason(e)}") from None
        raise Unreachable(url, _reason(e)) from None  # DNS failure, no route, connection refused
    except _NET_ERRORS as e:
        raise _Retry(_reason(e), connecting=True) from None


def _once(url: str, part: Path, size: int | None, timeout_s: float, progress: bool, running: _RunningHash) -> None:
    """One try: continue `part` towards the whole file (hashing it into `running`); raise
    _Retry when the try broke."""
    offset = part.stat().st_size if part.exists() else 0
    meta = _meta(part)
    validator = json.loads(meta.read_text()).get("validator") if offset and meta.exists() else None
    name = part.name.removesuffix(".part")
    with _open(url, offset, validator, timeout_s) as resp:
        if resp.status == 416:  # nothing left to send: complete already, or a part that does not fit
            if resp.headers.get("Content-Range", "").rpartition("/")[2] == str(offset):
                running.start_at(part, offset)
                return
            discard(part)
            raise _Retry("the server cannot resume this partial file; starting again")
        if resp.status == 206:
            span, _, total = resp.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
            if not span.startswith(f"{offset}-"):
                raise DownloadError(f"{url}: server sent range {span!r} for a request from byte {offset}")
        else:  # 200: the whole file (no range support, or it changed since the first try)
            offset, total = 0, resp.headers.get("Content-Length") or ""
            v = resp.headers.get("ETag") or ""
            meta.write_text(json.dumps({"url": url, "validator": v if v and not v.startswith("W/")
                                        else resp.headers.get("Last-Modified")}))
        total = int(total) if total.isdigit() else None
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{url}: server offers {total} bytes, expected {size}: not the published file")
        if total is not None and shutil.disk_usage(part.parent).free < total - offset:
            raise DiskFull(f"disk full: {part.parent} has less than the {total - offset} bytes {name} needs")
        done = offset
        running.start_at(part, offset)
        with writing(part), open(part, "ab" if offset else "wb") as f, \
                tqdm(total=total, initial=offset, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                     file=sys.stderr, disable=not (progress and progress_bars()), dynamic_ncols=True) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (*_NET_ERRORS, OSError) as e:
                    raise _Retry(f"connection broke at byte {done} ({_reason(e)})") from None
                if not chunk:
                    break
                _write(f, chunk)
                running.update(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    if total is not None and done < total:
        raise _Retry(f"connection closed at byte {done} of {total}")


def download(url: str, part: Path, *, retries: int, backoff_s: float, timeout_s: float, size: int | None = None,
             progress: bool = True) -> str:
    """Make `part` the whole file at `url`, resuming from what is there; returns its sha256
    (hashed as it is written, so `accept` need not read it again). A try that breaks is
    retried after backoff_s * 2**(k - 1) s; `retries` tries in a row without progress give up.
    Raises Unreachable, Refused, DiskFull or DownloadError; `size` (bytes), where known, refuses
    a server that offers another length."""
    failures, running = 0, _RunningHash()
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _once(url, part, size, timeout_s, progress, running)
            running.start_at(part, part.stat().st_size)  # a no-op unless the file was not all seen
            return running.h.hexdigest()
        except _Retry as e:
            failures = 1 if part.exists() and part.stat().st_size > before else failures + 1
            if failures > retries:
                if e.connecting:
                    raise Unreachable(url, str(e)) from None
                again = f"run again to resume from byte {part.stat().st_size}" if part.exists() else "run again"
                raise DownloadError(f"{url}: download failed after {retries + 1} tries ({e}); {again}") from None
            wait = min(backoff_s * 2 ** (failures - 1), MAX_WAIT_S)
            log.warning("%s: %s; retrying in %.0f s", part.name.removesuffix(".part"), e, wait)
            time.sleep(wait)
