"""Training and benchmark data sets: `flowsr-lp data list|download|prepare`.

    flowsr-lp data download DIV2K benchmark [--root data] [--mirror URL] [--prepare]
    flowsr-lp data prepare DIV2K benchmark [--root data]

Archives go to ROOT/downloads/ (resumable downloads, sha256-checked: published digests where the
registry has them, otherwise trust on first use with ROOT/.checksums.json), and `prepare` unpacks them
into ROOT/DIV2K/..., ROOT/Flickr2K/Flickr2K_HR, ROOT/benchmark/<set>/{HR,LR_bicubic/X2..X4}.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import registry as _registry
from .fetch import CHECKSUMS, download, downloads_dir, say
from .registry import DataError, Dataset, RemoteFile, Target, resolve
from .unpack import is_prepared, prepare

__all__ = ["DataError", "Dataset", "RemoteFile", "Target", "add_parser", "download", "list_text", "prepare",
           "resolve", "run"]

_TOFU = ("files without a published sha256 are checked by trust on first use: the sha256 of the first complete "
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
              f"Checksums: {_TOFU.replace('ROOT/.checksums.json', str(root / CHECKSUMS))}."]
    return "\n".join(lines)


def add_parser(sub) -> None:
    """Register `data` (list, download, prepare) on an argparse subparsers object; the handler is `run`."""
    names = ", ".join(_registry.REGISTRY)
    p = sub.add_parser("data", help="download and prepare training / benchmark data sets (DIV2K, Flickr2K, ...)",
                       description=f"Download and unpack super-resolution data sets ({names}). Checksums: {_TOFU}.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def common(q, nargs=True):
        if nargs:
            q.add_argument("names", nargs="+", metavar="NAME", help=f"data set: {names}")
        q.add_argument("--root", default="data", help="data folder (default: data)")
        q.set_defaults(func=run)

    q = dsub.add_parser("list", help="show the data sets, their sizes, and what is downloaded / prepared")
    common(q, nargs=False)
    q = dsub.add_parser("download", help="download archives into ROOT/downloads/ (resumable, sha256-checked)",
                        description=f"Download archives into ROOT/downloads/; an interrupted download resumes "
                                    f"where it stopped when run again. Checksums: {_TOFU}.")
    common(q)
    q.add_argument("--mirror", metavar="URL", help="base URL that replaces each file's default one")
    q.add_argument("--prepare", action="store_true", help="also unpack (as `data prepare`)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q = dsub.add_parser("prepare", help="unpack downloaded archives into the standard folder layout",
                        description="Unpack ROOT/downloads/ archives into ROOT/DIV2K/, ROOT/Flickr2K/Flickr2K_HR/, "
                                    "ROOT/benchmark/<set>/ (after checking their sha256).")
    common(q)
    q.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    """Handler for `flowsr-lp data ...`; problems raise flowsr_lp.cli.CLIError (one line, exit 2)."""
    from ..cli import CLIError

    try:
        if args.data_command == "list":
            print(list_text(args.root))
            return 0
        names = list(dict.fromkeys(resolve(n).name for n in args.names))
        progress, fetched = not args.quiet, set()
        for name in names:
            if args.data_command == "download":
                fetched.update(p.name for p in download(name, args.root, args.mirror, progress, skip=fetched))
                if not args.prepare:
                    say(f"{name}: downloaded and verified; next: flowsr-lp data prepare {name} --root {args.root}")
            if args.data_command == "prepare" or args.prepare:
                prepare(name, args.root, progress)
                say(f"{name}: ready under {args.root}")
    except DataError as e:
        raise CLIError(" ".join(str(e).split())) from None
    except OSError as e:
        raise CLIError(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)) from None
    return 0
