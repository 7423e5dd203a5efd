"""-q hides every progress bar, downloads included (they start deep inside load_flow, where no
`progress` argument reaches them)."""
import pytest

from flowsr_lp import cli, downloader, runtime

from hub_server import FileServer


@pytest.fixture
def served():
    server = FileServer({"/f.bin": bytes(range(256)) * 2048})  # 512 KB
    with server:
        yield server


def _download(served, tmp_path) -> None:
    downloader.download(f"{served.url}/f.bin", tmp_path / "f.bin.part", retries=0, backoff_s=0, timeout_s=10)
    (tmp_path / "f.bin.part").unlink()


def test_the_switch_silences_download_bars(served, tmp_path, capsys):
    _download(served, tmp_path)
    assert "f.bin" in capsys.readouterr().err  # the bar names the file
    previous = runtime.set_progress_bars(False)
    try:
        _download(served, tmp_path)
        assert capsys.readouterr().err == ""
    finally:
        runtime.set_progress_bars(previous)


@pytest.mark.parametrize("argv,bars", [(["-q", "models"], False), (["models", "-q"], False), (["models"], True)])
def test_q_turns_the_bars_off_for_the_command_only(monkeypatch, argv, bars):
    seen = []
    monkeypatch.setattr(cli.models, "run", lambda args: seen.append(runtime.progress_bars()) or 0)
    assert cli.main(argv) == 0
    assert seen == [bars] and runtime.progress_bars()  # restored after the command
