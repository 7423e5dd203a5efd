"""Command line: `flowsr-lp [-q|-v] COMMAND ...` (also `python -m flowsr_lp`).

Each command is a module here with `add_parser(sub, parents)` and `run(args)`; this module builds the
parser, configures `logging` from -q/-v, and maps the package's exceptions to exit codes in
one place (`EXIT_CODES`). Library modules never import this package."""
from __future__ import annotations

import argparse
import logging
import sys

from tqdm.contrib.logging import logging_redirect_tqdm

from .. import __version__
from ..cli_options import positive_int
from ..errors import FlowSRError, first_line
from ..runtime import set_progress_bars, set_threads
from . import app, data, demo, evaluate, models, temperature_map, train, upscale

COMMANDS = (demo, upscale, train, evaluate, temperature_map, data, models, app)

# (exception type, exit code), first match wins. 2: the call as a whole failed (bad option,
# unusable model or data, nothing done); commands themselves return 1 when some inputs failed.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (FlowSRError, 2),
    (FileNotFoundError, 2),
    (OSError, 2),  # the system refused (not a folder, permission, disk full): one line, no traceback
    (KeyboardInterrupt, 130),
)


class _LevelPrefix(logging.Formatter):
    """'message' for info, 'note: message' for warnings, 'error: message' for errors."""

    PREFIX = {logging.DEBUG: "debug: ", logging.WARNING: "note: ", logging.ERROR: "error: ",
              logging.CRITICAL: "error: "}

    def format(self, record: logging.LogRecord) -> str:
        return self.PREFIX.get(record.levelno, "") + super().format(record)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted (not when the handler was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(quiet: int = 0, verbose: int = 0) -> None:
    """The package's log on stderr: info by default (-q only hides progress bars), -qq warnings
    and errors only, -v debug."""
    handler = _StderrHandler()
    handler.setFormatter(_LevelPrefix("%(message)s"))
    log = logging.getLogger("flowsr_lp")
    log.handlers = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose > 0 else logging.WARNING if quiet > 1 else logging.INFO)


def _common_options(p: argparse.ArgumentParser, default, threads_default) -> None:
    p.add_argument("-q", "--quiet", action="count", default=default,
                   help="no progress bars; twice (-qq): warnings and errors only")
    p.add_argument("-v", "--verbose", action="count", default=default, help="more output (debug messages)")
    p.add_argument("--threads", type=positive_int, default=threads_default, metavar="N",
                   help="CPU threads (default: OMP_NUM_THREADS when set, else the cores idle at the start)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowsr-lp", description="Flow-based super-resolution with learned priors "
                                     "(FlowSR-LP, CVPR 2024): LINF and SRFlow, sampling or learned prior.")
    parser.add_argument("--version", action="version", version=f"flowsr-lp {__version__}")
    _common_options(parser, 0, None)
    common = argparse.ArgumentParser(add_help=False)  # -q/-v/--threads also after the command name
    _common_options(common, argparse.SUPPRESS, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub, [common])
    return parser


def exit_code(e: BaseException) -> int | None:
    return next((code for kind, code in EXIT_CODES if isinstance(e, kind)), None)


def error_message(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    # ours are one line by design; others (torch's RuntimeErrors...) can run over many
    text = (str(e).strip() or type(e).__name__) if isinstance(e, FlowSRError) else first_line(e)
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    if args.threads:
        set_threads(args.threads)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    bars = set_progress_bars(not args.quiet)  # also the downloads started deep inside a load
    try:
        with logging_redirect_tqdm([logging.getLogger("flowsr_lp")]):
            return int(args.run(args) or 0)
    except BaseException as e:
        code = exit_code(e)
        if code is None:
            raise
        print(f"flowsr-lp: error: {error_message(e)}", file=sys.stderr)
        return code
    finally:
        set_progress_bars(bars)
