"""The `flowsr-lp data list` table: what each data set is, and what is downloaded / prepared here."""
from __future__ import annotations

import os
from pathlib import Path

from . import registry as _registry
from .fetch import CHECKSUMS, downloads_dir
from .registry import Dataset
from .unpack import is_prepared

TOFU_NOTE = ("files without a published sha256 are checked by trust on first use: the sha256 of the first complete "
             "download is recorded in ROOT/.checksums.json and every later use is checked against it")


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def list_text(root: Path | str = "data", registry: dict[str, Dataset] | None = None) -> str:
    """The `data list` table: name, size, archives downloaded, folders prepared, where they go."""
    root = Path(root)
    reg = _registry.REGISTRY if registry is None else registry
    rows = [("NAME", "SIZE", "DOWNLOADED", "PREPARED", "LOCATION", "CONTENTS")]
    for ds in reg.values():
        sizes = []
        for f in ds.files:
            local = downloads_dir(root) / f.name
            sizes.append(f.size if f.size is not None else local.stat().st_size if local.is_file() else None)
        known = sum(s for s in sizes if s is not None)
        size = "?" if known == 0 and None in sizes else _human(known) + ("+?" if None in sizes else "")
        have = sum((downloads_dir(root) / f.name).is_file() for f in ds.files)
        done = sum(is_prepared(t, root) for t in ds.targets)
        prepared = "yes" if done == len(ds.targets) else "no" if not done else f"{done}/{len(ds.targets)}"
        where = os.path.commonpath([str(root / t.dest) for t in ds.targets])
        rows.append((ds.name, size, f"{have}/{len(ds.files)}", prepared, where, ds.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5] for r in rows]
    lines += ["", f"Archives are kept in {downloads_dir(root)}/; SIZE ? is unknown until downloaded.",
              f"Checksums: {TOFU_NOTE.replace('ROOT/.checksums.json', str(root / CHECKSUMS))}."]
    return "\n".join(lines)
