"""The table of released models (`models.json`, data only) and lookup by name.

Fields of an entry: `name`, `family` (`linf`, `linf-lp`, `srflow`, `srflow-lp`, `hcflow`; the `-lp` ones are
latent modules, whose `flow` names the flow they were trained for), `description`, `paper`,
`dataset`, `scales` ([min, max] training scales; LINF runs at any scale), `patch_size` (LINF),
`tau` (recommended temperature, as text), the source (`urls`, a Google Drive id `gdrive`, or
`bundled` in the package), `file` (the name in the cache and on a mirror), `archive` + `member`
(the file is a member of that archive), `size` (bytes or null), `checksum`
(`git-sha1:<hex>`, `sha256:<hex>` or null) and `license`.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import ModelNotFoundError

TABLE = Path(__file__).with_name("models.json")
WEIGHTS = Path(__file__).parent.parent / "weights"   # the bundled models
ALGORITHMS = ("git-sha1", "sha256")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    description: str
    paper: str
    dataset: str
    scales: tuple[float, float]
    file: str
    license: str
    tau: str | None = None
    patch_size: int | None = None
    flow: str | None = None
    urls: tuple[str, ...] = ()
    gdrive: str | None = None
    bundled: bool = False
    archive: str | None = None
    member: str | None = None
    size: int | None = None
    checksum: str | None = None

    @property
    def kind(self) -> str:
        return "prior" if self.family.endswith("-lp") else "flow"

    @property
    def download_name(self) -> str:
        """The file fetched from the source or a mirror: the archive, or the file itself."""
        return self.archive or self.file

    @property
    def source(self) -> str:
        if self.bundled:
            return "bundled"
        if self.gdrive:
            return f"https://drive.google.com/file/d/{self.gdrive}/view"
        return self.urls[0] + (f" ({self.member})" if self.member else "")

    def scale_text(self) -> str:
        lo, hi = self.scales
        if self.family.startswith("linf"):
            return f"any (trained {lo:g}-{hi:g})"
        return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def _entry(raw: dict, table: Path) -> ModelEntry:
    try:
        e = ModelEntry(**{**raw, "scales": tuple(raw["scales"]), "urls": tuple(raw.get("urls", ()))})
    except TypeError as err:
        raise ModelNotFoundError(f"{table}: bad entry {raw.get('name')!r}: {err}") from None
    algo = (e.checksum or "").partition(":")[0]
    if e.checksum and algo not in ALGORITHMS:
        raise ModelNotFoundError(f"{table}: {e.name}: checksum algorithm {algo!r} (expected one of {ALGORITHMS})")
    if not (e.bundled or e.urls or e.gdrive) or bool(e.archive) != bool(e.member):
        raise ModelNotFoundError(f"{table}: {e.name}: needs urls, gdrive or bundled, and archive with member")
    return e


@lru_cache(maxsize=4)
def _load(table: Path) -> dict[str, ModelEntry]:
    entries = [_entry(raw, table) for raw in json.loads(table.read_text())["models"]]
    return {e.name: e for e in entries}


def models(table: Path | None = None) -> dict[str, ModelEntry]:
    """Every entry, by name, in table order."""
    return _load(table or TABLE)


BUNDLED = tuple(e.name for e in _load(TABLE).values() if e.bundled)   # shipped inside the package


def find(name: str, table: Path | None = None) -> ModelEntry | None:
    """The entry called `name` (case-insensitive), or None."""
    table_models = models(table)
    return table_models.get(name) or next((e for k, e in table_models.items() if k.lower() == name.lower()), None)


def suggest(name: str, table: Path | None = None) -> list[str]:
    """Registry names close to `name` (difflib), best first."""
    names = list(models(table))
    stem = Path(name).stem.lower()
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.6)
    return close or [n for n in names if stem and (stem in n or n in stem)][:3]


def lookup(name: str, table: Path | None = None) -> ModelEntry:
    """The entry called `name`; an unknown name raises ModelNotFoundError with close names."""
    entry = find(name, table)
    if entry is None:
        close = suggest(name, table)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; `flowsr-lp models` lists them"
        raise ModelNotFoundError(f"unknown model {name!r}{hint}")
    return entry
