"""Fetching one file into the cache: resumable HTTP (Range requests), Google Drive through
`gdown`, members of zip archives. Everything is written to `NAME.part` beside its final name
and renamed only after its checksum holds; a wrong checksum deletes the download."""
from __future__ import annotations

import contextlib
import errno
import http.client
import logging
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from ..errors import DownloadError, ModelNotFoundError
from .cache import CHUNK, check, digests, make_dir, record

log = logging.getLogger("flowsr_lp.hub")
RETRIES = 3        # consecutive tries without progress before giving up
BACKOFF_S = 1.0    # wait before retry k: BACKOFF_S * 2**(k - 1)
TIMEOUT_S = 30.0


class _Retry(Exception):
    """A try that broke in a way worth retrying (cut connection, HTTP 5xx, timeout)."""


class _Unreachable(Exception):
    """The host could not be reached at all (offline, DNS failure, connection refused)."""


class _Refused(DownloadError):
    """The server answered with an HTTP error that retrying will not fix (404, 403, ...)."""


@contextlib.contextmanager
def _writing(part: Path):
    """Turn a full disk (or another write failure) into one DownloadError; a full disk also
    deletes the partial file to give the space back."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            part.unlink(missing_ok=True)
            raise DownloadError(f"disk full while writing {part.name} in {part.parent}; free some space or "
                                "point $FLOWSR_LP_HOME to a larger disk") from None
        raise DownloadError(f"{part}: cannot write ({e.strerror or e})") from None


def _write(f, chunk: bytes) -> None:
    f.write(chunk)


def _open(url: str, offset: int):
    headers = {"User-Agent": "flowsr-lp", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return e
        if e.code >= 500 or e.code in (408, 429):
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise _Refused(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (TimeoutError, ConnectionResetError, ConnectionAbortedError)):
            raise _Retry(str(reason)) from None
        if isinstance(reason, ssl.SSLError) or not isinstance(reason, OSError):
            raise DownloadError(f"{url}: {reason}") from None
        raise _Unreachable(getattr(reason, "strerror", None) or str(reason)) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise _Retry(str(e) or type(e).__name__) from None


def _http_once(url: str, part: Path, progress: bool) -> None:
    """Continue `part` towards the whole file; raise _Retry when the try broke."""
    offset = part.stat().st_size if part.exists() else 0
    with _open(url, offset) as resp:
        if resp.status == 416:  # nothing left to send: complete already, or a stale part
            if resp.headers.get("Content-Range", "").rpartition("/")[2] == str(offset):
                return
            part.unlink()
            raise _Retry("the server cannot resume this partial file; starting again")
        if resp.status == 206:
            span, _, total = resp.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
            if not span.startswith(f"{offset}-"):
                raise DownloadError(f"{url}: server sent range {span!r} for a request from byte {offset}")
        else:  # 200: the whole file, from the start
            offset, total = 0, resp.headers.get("Content-Length", "")
        total = int(total) if total.isdigit() else None
        if total is not None and shutil.disk_usage(part.parent).free < total - offset:
            raise DownloadError(f"disk full: {part.parent} has less than the {total - offset} bytes "
                                f"{part.name.removesuffix('.part')} needs; free some space or point "
                                "$FLOWSR_LP_HOME to a larger disk")
        done = offset
        with _writing(part), open(part, "ab" if offset else "wb") as f, \
                tqdm(total=total, initial=offset, desc=part.name.removesuffix(".part"), unit="B", unit_scale=True,
                     unit_divisor=1024, file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Retry(f"connection broke at byte {done} ({type(e).__name__})") from None
                if not chunk:
                    break
                _write(f, chunk)
                done += len(chunk)
                bar.update(len(chunk))
    if total is not None and done < total:
        raise _Retry(f"connection closed at byte {done} of {total}")


def _http(url: str, part: Path, progress: bool) -> None:
    """Download `url` into `part`, resuming from what is there, with retries."""
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            return _http_once(url, part, progress)
        except _Retry as e:
            failures = 1 if part.exists() and part.stat().st_size > before else failures + 1
            if failures > RETRIES:
                again = f"run again to resume from byte {part.stat().st_size}" if part.exists() else "run again"
                raise DownloadError(f"{url}: download failed after {RETRIES + 1} tries ({e}); {again}") from None
            log.warning("%s: %s; retrying", part.name.removesuffix(".part"), e)
            time.sleep(BACKOFF_S * 2 ** (failures - 1))


def _gdrive(file_id: str, part: Path, progress: bool) -> None:
    try:
        import gdown
    except ImportError:
        raise DownloadError("Google Drive downloads need gdown: pip install gdown") from None
    try:
        with _writing(part):
            out = gdown.download(id=file_id, output=str(part), quiet=not progress, resume=True, retries=RETRIES)
    except (gdown.exceptions.DownloadError, ValueError, OSError) as e:  # requests' errors are OSErrors
        if isinstance(e, OSError) or isinstance(e.__cause__, OSError):  # no connection (after gdown's retries)
            raise _Unreachable(type(e.__cause__ or e).__name__) from None
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]  # e.g. Drive's download quota
        raise _Refused(f"Google Drive file {file_id}: {lines[0] if lines else type(e).__name__}") from None
    if out is None or not part.is_file():
        raise DownloadError(f"Google Drive file {file_id}: nothing was downloaded")


def accept(part: Path, dest: Path, expected: str | None, source: str) -> Path:
    """Check `part` against `expected` ('<algo>:<hex>'; None: record its sha256) and move it to
    `dest`; a mismatch deletes it."""
    try:
        if expected:
            check(part, expected, dest.name)
    except DownloadError as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{e}; the download was deleted") from None
    if not expected:
        record(dest, digests(part)["sha256"], source)
    os.replace(part, dest)
    return dest


def fetch(dest: Path, expected: str | None, *, url: str | None = None, gdrive: str | None = None,
          progress: bool = True) -> Path:
    """Download `url` (or Google Drive file `gdrive`) to `dest` through `dest.part`, verified."""
    part = make_dir(dest.parent) / (dest.name + ".part")
    source = url or f"https://drive.google.com/file/d/{gdrive}/view"
    try:
        _gdrive(gdrive, part, progress) if gdrive else _http(url, part, progress)
    except _Refused as e:
        raise DownloadError(f"{e}; get the file elsewhere and save it as {dest}") from None
    except _Unreachable as e:
        host = urllib.parse.urlsplit(source).netloc
        raise ModelNotFoundError(f"cannot reach {host} ({e}): offline? fetch {source} by hand and save it "
                                 f"as {dest}") from None
    return accept(part, dest, expected, source)


def extract(archive: Path, member: str, dest: Path, expected: str | None) -> Path:
    """Copy the archive member whose file name is `member` to `dest` (verified like a download)."""
    part = make_dir(dest.parent) / (dest.name + ".part")
    try:
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == member]
            if not names:
                held = sorted({n.rsplit("/", 1)[-1] for n in z.namelist() if not n.endswith("/")})
                raise DownloadError(f"{archive}: no member {member} in the archive (it holds "
                                    f"{', '.join(held[:8]) or 'nothing'}{', ...' if len(held) > 8 else ''})")
            with _writing(part), z.open(names[0]) as src, open(part, "wb") as out:
                while chunk := src.read(CHUNK):
                    _write(out, chunk)
    except (zipfile.BadZipFile, EOFError) as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{archive}: not a readable zip archive ({e}); delete it to download it again") from None
    return accept(part, dest, expected, f"{archive.name}:{member}")
