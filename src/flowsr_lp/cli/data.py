"""`flowsr-lp data list|download|prepare`: training and benchmark data sets."""
from __future__ import annotations

from pathlib import Path

from ..datasets.fetch import download, say
from ..datasets.listing import TOFU_NOTE, list_text
from ..datasets.registry import REGISTRY, resolve
from ..datasets.unpack import prepare
from ..errors import UsageError


def add_parser(sub, parents=()) -> None:
    names = ", ".join(REGISTRY)
    p = sub.add_parser("data", parents=list(parents),
                       help="download and prepare training / benchmark data sets (DIV2K, Flickr2K, ...)",
                       description=f"Download and unpack super-resolution data sets ({names}). Checksums: {TOFU_NOTE}.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def action(name, with_names=True, **kw):
        q = dsub.add_parser(name, parents=list(parents), **kw)
        if with_names:
            q.add_argument("names", nargs="+", metavar="NAME", help=f"data set: {names}")
        q.add_argument("--root", default="data", help="data folder (default: data)")
        q.set_defaults(run=run)
        return q

    action("list", with_names=False, help="show the data sets, their sizes, and what is downloaded / prepared")
    q = action("download", help="download archives into ROOT/downloads/ (resumable, sha256-checked)",
               description=f"Download archives into ROOT/downloads/; an interrupted download resumes "
                           f"where it stopped when run again. Checksums: {TOFU_NOTE}.")
    q.add_argument("--mirror", metavar="URL", help="base URL that replaces each file's default one")
    q.add_argument("--prepare", action="store_true", help="also unpack (as `data prepare`)")
    action("prepare", help="unpack downloaded archives into the standard folder layout",
           description="Unpack ROOT/downloads/ archives into ROOT/DIV2K/, ROOT/Flickr2K/Flickr2K_HR/, "
                       "ROOT/benchmark/<set>/ (after checking their sha256).")


def run(args) -> int:
    if Path(args.root).exists() and not Path(args.root).is_dir():
        raise UsageError(f"--root {args.root}: not a folder")
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
        if args.data_command == "download" and args.prepare or args.data_command == "prepare":
            prepare(name, args.root, progress, verified=fetched)  # each archive hashed once per call
            say(f"{name}: ready under {args.root}")
    return 0
