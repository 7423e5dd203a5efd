"""The command line's shell: commands, -q/-v logging, exit codes; library code never imports it."""
import ast
import logging
from pathlib import Path

import pytest

from flowsr_lp import cli
from flowsr_lp.datasets.registry import DataError
from flowsr_lp.errors import CheckpointError, ExplodingInverse, UsageError

PACKAGE = Path(cli.__file__).resolve().parents[1]


def test_every_command_is_registered():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert {"upscale", "evaluate", "temperature-map", "demo", "train-flow", "train-prior", "data"} <= set(sub.choices)


@pytest.mark.parametrize("exc,code", [(UsageError("bad"), 2), (CheckpointError("x"), 2), (ExplodingInverse("x"), 2),
                                      (DataError("x"), 2), (FileNotFoundError(2, "No such file", "f.png"), 2),
                                      (KeyboardInterrupt(), 130), (RuntimeError("a bug"), None)])
def test_exit_codes_come_from_one_table(exc, code):
    assert cli.exit_code(exc) == code


def test_errors_are_one_line_and_bugs_are_not_hidden(monkeypatch, capsys):
    def fail(args):
        raise CheckpointError("ck.pth: unreadable\n  with detail")

    monkeypatch.setattr(cli.upscale, "run", fail)
    assert cli.main(["upscale", "x.png", "-o", "out"]) == 2
    assert capsys.readouterr().err == "flowsr-lp: error: ck.pth: unreadable with detail\n"
    monkeypatch.setattr(cli.upscale, "run", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["upscale", "x.png", "-o", "out"])


@pytest.mark.parametrize("argv,shown", [([], {"info", "warning"}), (["-q"], {"info", "warning"}),
                                        (["-qq"], {"warning"}), (["-v"], {"debug", "info", "warning"})])
def test_verbosity_before_or_after_the_command(monkeypatch, capsys, argv, shown):
    log = logging.getLogger("flowsr_lp.upscale")

    def run(args):
        log.debug("debug")
        log.info("info")
        log.warning("warning")
        return 0

    monkeypatch.setattr(cli.upscale, "run", run)
    for where in (argv + ["upscale", "x.png", "-o", "o"], ["upscale", *argv, "x.png", "-o", "o"]):
        assert cli.main(where) == 0
        err = capsys.readouterr().err
        assert {w for w in ("debug", "info", "warning") if w in err} == shown
        assert "note: warning" in err


def test_library_modules_never_import_the_cli():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        text = path.read_text()
        if rel.parts[0] == "cli" or rel.name in ("__main__.py", "cli_options.py") or "cli" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
                if any(n == "cli" or n.startswith("cli.") or n.startswith("flowsr_lp.cli") or n == "cli_options"
                       for n in names):
                    offenders.append(str(rel))
            elif isinstance(node, ast.Import) and any(a.name.startswith("flowsr_lp.cli") for a in node.names):
                offenders.append(str(rel))
    assert offenders == []
