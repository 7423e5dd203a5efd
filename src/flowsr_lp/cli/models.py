"""`flowsr-lp models [list|download|convert]`: the released models by name."""
from __future__ import annotations

import os

from ..cli_options import add_taps
from ..hub.cache import home
from ..hub.convert import convert
from ..hub.registry import lookup, models
from ..hub.resolve import entry_path, status

COLUMNS = ("name", "family", "scale", "size", "cached", "verified", "source")


def add_parser(sub, parents=()) -> None:
    p = sub.add_parser("models", parents=list(parents), help="list, download or convert the released models",
                       description="Released LINF, SRFlow and FlowSR-LP models by name. Any --flow / --prior also "
                                   "takes these names (downloaded, verified and cached on first use), http(s) URLs "
                                   "and hf://owner/repo/file. Cache: $FLOWSR_LP_HOME; $FLOWSR_LP_MIRROR=<base URL> "
                                   "fetches every model from <base URL>/<file>.")
    p.set_defaults(run=run)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.add_parser("list", parents=list(parents), help="the table (the default action)")
    q = msub.add_parser("download", parents=list(parents), help="download and verify models into the cache")
    q.add_argument("names", nargs="+", metavar="NAME")
    q = msub.add_parser("convert", parents=list(parents),
                        help="an official checkpoint to a flowsr-lp .safetensors file (weights + config)")
    q.add_argument("model", metavar="NAME|PATH|URL")
    q.add_argument("-o", "--out", required=True, metavar="X.safetensors")
    add_taps(q)


def table() -> str:
    rows = [tuple(c.upper() for c in COLUMNS)]
    for entry in models().values():
        s = status(entry)
        s["size"] = "?" if s["size"] is None else f"{s['size'] / 1e6:.1f} MB"
        rows.append(tuple(str(s[c]) for c in COLUMNS))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    mirror = os.environ.get("FLOWSR_LP_MIRROR")
    lines += ["", f"cache: {home()}" + (f"; mirror: {mirror}" if mirror else ""),
              "verified: yes = checked against a published hash on every load; unverified = no hash is published "
              "(its sha256 is recorded on first download and checked from then on)"]
    return "\n".join(lines)


def run(args) -> int:
    if args.models_command in (None, "list"):
        print(table())
    elif args.models_command == "download":
        entries = [lookup(n) for n in dict.fromkeys(args.names)]  # every name checked before any download
        for entry in entries:
            print(f"{entry.name}: {entry_path(entry, progress=not args.quiet)}")
    else:
        out, kind = convert(args.model, args.out, taps=args.taps)
        print(f"{args.model}: {kind} written to {out}")
    return 0
