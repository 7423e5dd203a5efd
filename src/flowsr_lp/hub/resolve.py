"""What a checkpoint argument means: a local path, a registry name, an http(s) URL, or
`hf://owner/repo[@revision]/path/in/repo` (Hugging Face Hub, through its own cache).

`$FLOWSR_LP_MIRROR=<base URL>` makes every registry entry download from `<base URL>/<file>`
(its `download_name`: the archive for archive members) instead of its source."""
from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path

from ..downloader import verify
from ..errors import CheckpointError, ModelNotFoundError, first_line
from .cache import home, locked, record, recorded
from .download import extract, fetch
from .registry import WEIGHTS, ModelEntry, find, lookup, suggest

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pkl", ".ckpt", ".bin", ".safetensors")
KIND_WORDS = {"flow": ("a flow", "--flow / load_flow"), "prior": ("a latent module", "--prior / load_prior")}


def cache_path(entry: ModelEntry) -> Path:
    """Where `entry`'s file is (bundled) or will be (downloaded)."""
    return WEIGHTS / entry.file if entry.bundled else home() / "models" / entry.file


def archive_path(entry: ModelEntry) -> Path | None:
    return home() / "archives" / entry.archive if entry.archive else None


def _mirror_url(name: str) -> str | None:
    base = os.environ.get("FLOWSR_LP_MIRROR", "").strip()
    return f"{base.rstrip('/')}/{name}" if base else None


def verify_cached(path: Path, expected: str | None) -> Path:
    """Check a cached file against its pinned or recorded checksum (recording one for a file
    put there by hand)."""
    verify(path, expected or recorded(path), lambda sha256: record(path, sha256, "a file found in the cache"))
    return path


def _download(entry: ModelEntry, dest: Path, progress: bool) -> Path:
    mirror = _mirror_url(entry.download_name)
    if entry.archive:
        archive = archive_path(entry)
        with locked(archive):
            if not archive.is_file():
                fetch(archive, None, url=mirror or entry.urls[0], progress=progress)
        return extract(archive, entry.member, dest, entry.checksum)
    if mirror or not entry.gdrive:
        return fetch(dest, entry.checksum, url=mirror or entry.urls[0], progress=progress)
    return fetch(dest, entry.checksum, gdrive=entry.gdrive, progress=progress)


def entry_path(entry: ModelEntry, progress: bool = True) -> Path:
    """The local file of a registry entry: bundled, cached (checked again), or downloaded now."""
    dest = cache_path(entry)
    if entry.bundled:
        if not dest.is_file():
            raise ModelNotFoundError(f"bundled model {entry.name} is missing from the installation ({dest})")
        return dest
    with locked(dest):
        if not dest.is_file():
            return _download(entry, dest, progress)
        try:
            return verify_cached(dest, entry.checksum)
        except CheckpointError as e:
            raise type(e)(f"{e}: the cached copy of {entry.name} changed after download; delete it to "
                          "download it again") from None


def _url_path(url: str, progress: bool) -> Path:
    name = Path(urllib.parse.urlsplit(url).path).name or "download"
    dest = home() / "urls" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    with locked(dest):
        if dest.is_file():
            return verify_cached(dest, None)
        return fetch(dest, None, url=url, progress=progress)


def _hf_path(spec: str) -> Path:
    parts = spec.removeprefix("hf://").split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ModelNotFoundError(f"{spec}: expected hf://OWNER/REPO/FILE (or hf://OWNER/REPO@REVISION/FILE)")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise ModelNotFoundError(f"{spec}: Hugging Face downloads need huggingface_hub: "
                                 "pip install huggingface_hub") from None
    repo, _, revision = parts[1].partition("@")
    repo_id = f"{parts[0]}/{repo}"
    try:
        return Path(hf_hub_download(repo_id, parts[2], revision=revision or None))
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{spec}: not in the Hugging Face cache and the Hub cannot be reached (offline or HF_HUB_OFFLINE): "
            f"fetch https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{parts[2]} by hand and pass "
            "its local path") from None
    except (EntryNotFoundError, RepositoryNotFoundError) as e:
        raise ModelNotFoundError(f"{spec}: {first_line(e)}") from None
    except OSError as e:  # HfHubHTTPError and connection errors
        raise ModelNotFoundError(f"{spec}: {first_line(e)}") from None


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.lower().endswith(CHECKPOINT_SUFFIXES) or text.startswith(".")


def resolve(spec: str | Path, kind: str | None = None, progress: bool = True) -> Path:
    """The local checkpoint file `spec` stands for, downloading it when needed. `kind` ('flow'
    or 'prior') refuses a registry model of the other kind before anything is downloaded."""
    text = str(spec)
    local = Path(text).expanduser()
    if local.is_file():
        return local
    if text.startswith("hf://"):
        return _hf_path(text)
    if text.startswith(("http://", "https://")):
        return _url_path(text, progress)
    entry = find(text)
    if entry is None:
        if local.is_dir():
            raise ModelNotFoundError(f"{text}: a folder, not a checkpoint file")
        if _looks_like_path(text):
            close = suggest(text)
            hint = f" (or a model name: {', '.join(close)}?)" if close else ""
            raise ModelNotFoundError(f"{text}: no such checkpoint file{hint}")
        entry = lookup(text)
    if kind and entry.kind != kind:
        (what, how), hint = KIND_WORDS[entry.kind], f" for {entry.flow}" if entry.flow else ""
        raise CheckpointError(f"{entry.name} is {what}{hint}, not {KIND_WORDS[kind][0]}: pass it as {how}")
    return entry_path(entry, progress)


def flow_for_prior(spec: str | Path | None) -> str | None:
    """The registry name of the flow a registry prior was trained for (None for anything else)."""
    entry = find(str(spec)) if spec is not None and not Path(str(spec)).is_file() else None
    return entry.flow if entry is not None and entry.kind == "prior" else None


def bundled_path(name: str) -> Path:
    """The file of a bundled model (no download)."""
    entry = lookup(name)
    if not entry.bundled:
        raise ModelNotFoundError(f"{name} is not bundled with the package")
    return cache_path(entry)


def default_models() -> tuple[Path, Path | None]:
    """(flow, prior) for `flowsr-lp upscale` without --flow: the bundled small LINF and its latent module."""
    flow, prior = bundled_path("linf-small"), bundled_path("linf-small-lp")
    if not flow.is_file():
        raise ModelNotFoundError(f"no bundled model at {flow}; pass --flow CHECKPOINT")
    return flow, prior if prior.is_file() else None


def status(entry: ModelEntry) -> dict:
    """What `flowsr-lp models` shows for an entry, without reading the files."""
    path = cache_path(entry)
    have = path.is_file()
    archive = archive_path(entry)
    cached = "bundled" if entry.bundled else "yes" if have else \
        "archive" if archive is not None and archive.is_file() else "no"
    if entry.bundled:
        verified = "bundled"
    elif entry.checksum:
        verified = f"yes ({entry.checksum.partition(':')[0]})"
    else:
        verified = "unverified" + (" (sha256 recorded)" if have and recorded(path) else "")
    size = path.stat().st_size if have else entry.size
    return {"name": entry.name, "family": entry.family, "scale": entry.scale_text(), "size": size,
            "cached": cached, "verified": verified, "source": entry.source, "path": path}
