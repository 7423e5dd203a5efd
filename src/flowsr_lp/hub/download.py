"""Fetching one model file into the cache with the package's downloader (`flowsr_lp.downloader`:
resumable HTTP, `NAME.part`, checked before the rename), plus what only models need: Google
Drive through `gdown`, members of zip archives, and errors that say where to save a copy."""
from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path

from ..downloader import DiskFull, Refused, Unreachable, accept, copy, discard, download, part_of, writing
from ..errors import DownloadError, ModelNotFoundError, first_line
from ..runtime import progress_bars
from .cache import make_dir, record

RETRIES = 3        # consecutive tries without progress before giving up
BACKOFF_S = 1.0    # wait before retry k: BACKOFF_S * 2**(k - 1)
TIMEOUT_S = 30.0


@contextlib.contextmanager
def _hints(dest: Path, source: str):
    """Add to a failed download where the user can put a copy or make room."""
    try:
        yield
    except Refused as e:
        raise DownloadError(f"{e}; get the file elsewhere and save it as {dest}") from None
    except Unreachable as e:
        raise ModelNotFoundError(f"{e} fetch {source} by hand and save it as {dest}") from None
    except DiskFull as e:
        raise DownloadError(f"{e}; free some space or point $FLOWSR_LP_HOME to a larger disk") from None


def _gdrive(file_id: str, part: Path, progress: bool) -> None:
    try:
        import gdown
    except ImportError:
        raise DownloadError("Google Drive downloads need gdown: pip install gdown") from None
    source = f"https://drive.google.com/file/d/{file_id}/view"
    try:
        with writing(part):
            out = gdown.download(id=file_id, output=str(part), quiet=not (progress and progress_bars()), resume=True, retries=RETRIES)
    except (gdown.exceptions.DownloadError, ValueError, OSError) as e:  # requests' errors are OSErrors
        if isinstance(e, OSError) or isinstance(e.__cause__, OSError):  # no connection (after gdown's retries)
            raise Unreachable(source, type(e.__cause__ or e).__name__) from None
        raise Refused(f"Google Drive file {file_id}: {first_line(e)}") from None  # e.g. Drive's download quota
    if out is None or not part.is_file():
        raise DownloadError(f"Google Drive file {file_id}: nothing was downloaded")


def _accept(part: Path, dest: Path, expected: str | None, source: str, sha256: str | None = None) -> Path:
    """`dest` from `part` once it has the pinned checksum (or its sha256 recorded on first use);
    `sha256`: the part's digest when it was hashed while written."""
    return accept(part, dest, expected, lambda digest: record(dest, digest, source), sha256=sha256)


def fetch(dest: Path, expected: str | None, *, url: str | None = None, gdrive: str | None = None,
          progress: bool = True) -> Path:
    """Download `url` (or Google Drive file `gdrive`) to `dest` through `dest.part`, verified
    against `expected` ('<algo>:<hex>'; None: record its sha256)."""
    part = part_of(make_dir(dest.parent) / dest.name)
    source = url or f"https://drive.google.com/file/d/{gdrive}/view"
    sha256 = None  # gdown writes the file itself: hashed after
    with _hints(dest, source):
        if gdrive:
            _gdrive(gdrive, part, progress)
        else:
            sha256 = download(url, part, retries=RETRIES, backoff_s=BACKOFF_S, timeout_s=TIMEOUT_S, progress=progress)
    return _accept(part, dest, expected, source, sha256)


def extract(archive: Path, member: str, dest: Path, expected: str | None) -> Path:
    """Copy the archive member whose file name is `member` to `dest` (verified like a download)."""
    part = part_of(make_dir(dest.parent) / dest.name)
    try:
        with zipfile.ZipFile(archive) as z, _hints(dest, f"{archive}:{member}"):
            names = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == member]
            if not names:
                held = sorted({n.rsplit("/", 1)[-1] for n in z.namelist() if not n.endswith("/")})
                raise DownloadError(f"{archive}: no member {member} in the archive (it holds "
                                    f"{', '.join(held[:8]) or 'nothing'}{', ...' if len(held) > 8 else ''})")
            with z.open(names[0]) as src:
                sha256 = copy(src, part)
    except (zipfile.BadZipFile, EOFError) as e:
        discard(part)
        raise DownloadError(f"{archive}: not a readable zip archive ({e}); delete it to download it again") from None
    return _accept(part, dest, expected, f"{archive.name}:{member}", sha256)
