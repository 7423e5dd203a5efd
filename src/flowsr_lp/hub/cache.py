"""Where downloaded models live, and how a cached file is checked.

Layout under `$FLOWSR_LP_HOME` (default: the user's cache folder, e.g. ~/.cache/flowsr-lp):
`models/FILE` (registry entries), `archives/FILE` (archives that hold them), `urls/KEY/FILE`
(files loaded by http(s) URL), `checksums.json` (sha256 recorded on first download where no
hash is published) and `.locks/`. A file appears under its final name only once its checksum
holds; a pinned checksum is checked again every time the file is used.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from ..downloader import ChecksumTable
from ..errors import DownloadError

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent first downloads are not coordinated there
    fcntl = None

RECORD = "checksums.json"


def home() -> Path:
    """The cache root: $FLOWSR_LP_HOME, else the platform's user cache folder + flowsr-lp."""
    if os.environ.get("FLOWSR_LP_HOME"):
        return Path(os.environ["FLOWSR_LP_HOME"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "flowsr-lp"


def make_dir(path: Path) -> Path:
    """mkdir -p, or one DownloadError naming the way out."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {path} ({e.strerror or e}); set $FLOWSR_LP_HOME to a writable "
                            "folder") from None
    return path


def _key(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def recorded(path: Path, root: Path | None = None) -> str | None:
    """The 'sha256:<hex>' recorded for a cached file on its first download, or None."""
    root = root or home()
    return ChecksumTable(root / RECORD).get(_key(path, root))


def record(path: Path, sha256: str, source: str, root: Path | None = None) -> None:
    """Remember the sha256 of a first download (trust on first use) and say so."""
    root = root or home()
    ChecksumTable(root / RECORD).put(_key(path, root), sha256, source)


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock named after `path` (other processes wait; e.g. torchrun ranks)."""
    root = home()
    locks = make_dir(root / ".locks")
    if fcntl is None:
        yield
        return
    with open(locks / (_key(path, root).replace("/", "__") + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
