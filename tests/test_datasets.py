"""`flowsr-lp data`: downloads from a local HTTP server (Range support, cut / failing responses) serving
small fake archives under the real file names, then `prepare` into the standard layout. No internet."""
from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from flowsr_lp.cli import main
from flowsr_lp.datasets import fetch, registry
from flowsr_lp.datasets.fetch import download
from flowsr_lp.datasets.registry import DataError
from flowsr_lp.datasets.unpack import prepare

SETS = ("Set5", "Set14", "B100", "Urban100")


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (seed * 37 % 256, seed * 91 % 256, 7)).save(buf, "PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    """Fake archives named and laid out like the real ones."""
    out = {}
    for split, ids in (("train", ["0001", "0002"]), ("valid", ["0801"])):
        out[f"DIV2K_{split}_HR.zip"] = _zip({f"DIV2K_{split}_HR/{i}.png": _png(int(i)) for i in ids})
        for s in (2, 3, 4):
            out[f"DIV2K_{split}_LR_bicubic_X{s}.zip"] = _zip(
                {f"DIV2K_{split}_LR_bicubic/X{s}/{i}x{s}.png": _png(int(i) + s) for i in ids})
    out["Flickr2K.tar"] = _tar({"Flickr2K/Flickr2K_HR/000001.png": _png(1), "Flickr2K/Flickr2K_HR/000002.png": _png(2),
                                "Flickr2K/Flickr2K_LR_bicubic/X2/000001x2.png": _png(3)})
    bench = {}
    for k, name in enumerate(SETS):
        bench[f"benchmark/{name}/HR/img{k}.png"] = _png(k)
        for s in (2, 3, 4):
            bench[f"benchmark/{name}/LR_bicubic/X{s}/img{k}x{s}.png"] = _png(k + s)
    out["benchmark.tar"] = _tar(bench)
    return out


class _Handler(BaseHTTPRequestHandler):
    """GET with `Range: bytes=N-`; the server's attributes make it fail or cut responses."""

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.log.append({"path": self.path, "range": rng})
        if srv.fail_first > 0:
            srv.fail_first -= 1
            self.send_error(503)
            return
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng and srv.ranges else 0
        if start >= len(data) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if srv.cuts > 0 and self.path.endswith(srv.cut_only):  # promise the whole length, send part of it, hang up
            srv.cuts -= 1
            body = body[:srv.cut_after]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(archives):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files = {f"mirror/{k}": v for k, v in archives.items()}
    srv.log, srv.fail_first, srv.cuts, srv.cut_after, srv.cut_only, srv.ranges = [], 0, 0, 0, "", True
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/mirror"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    monkeypatch.setattr(fetch, "TIMEOUT_S", 5.0)


def cli(argv: list[str]) -> int:
    return main(argv)


def table(out: str) -> dict[str, list[str]]:
    rows = [re.split(r"\s{2,}", line) for line in out.splitlines() if line.strip()]
    return {r[0]: r for r in rows}


def files_under(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}


def test_download_and_prepare_layout(server, archives, tmp_path, capsys):
    root = tmp_path / "data"
    for name in ("DIV2K", "Flickr2K", "benchmark"):
        paths = download(name, root, mirror=server.url, progress=False)
        assert all(p.read_bytes() == archives[p.name] for p in paths)
        prepare(name, root, progress=False)
    got = files_under(root)
    for split, i in (("train", "0001"), ("train", "0002"), ("valid", "0801")):
        assert f"DIV2K/DIV2K_{split}_HR/{i}.png" in got
        for s in (2, 3, 4):
            assert f"DIV2K/DIV2K_{split}_LR_bicubic/X{s}/{i}x{s}.png" in got
    assert {p for p in got if p.startswith("Flickr2K/")} == {"Flickr2K/Flickr2K_HR/000001.png",
                                                              "Flickr2K/Flickr2K_HR/000002.png"}
    for k, name in enumerate(SETS):
        assert f"benchmark/{name}/HR/img{k}.png" in got
        assert all(f"benchmark/{name}/LR_bicubic/X{s}/img{k}x{s}.png" in got for s in (2, 3, 4))
    assert Image.open(root / "DIV2K/DIV2K_valid_HR/0801.png").size == (4, 3)
    assert not [p for p in root.iterdir() if p.name.startswith(".prepare")]
    assert not list((root / "downloads").glob("*.part*"))
    # every file's sha256 was recorded on first use, and nothing is fetched again
    table = json.loads((root / ".checksums.json").read_text())
    assert set(table) == set(archives)
    assert all(table[k]["sha256"] == hashlib.sha256(v).hexdigest() for k, v in archives.items())
    server.log.clear()
    download("DIV2K", root, mirror=server.url, progress=False)
    assert server.log == []
    assert "already downloaded, sha256 ok" in capsys.readouterr().err


def test_alias_fetches_pack_and_prepares_one_set(server, tmp_path, capsys):
    root = tmp_path / "data"
    assert cli(["data", "download", "set5", "--root", str(root), "--mirror", server.url, "--prepare",
                "--quiet"]) == 0
    assert (root / "downloads/benchmark.tar").is_file()
    assert (root / "benchmark/Set5/LR_bicubic/X4").is_dir() and not (root / "benchmark/Set14").exists()
    assert cli(["data", "prepare", "benchmark", "--root", str(root), "--quiet"]) == 0
    assert all((root / f"benchmark/{s}/HR").is_dir() for s in SETS)
    assert "benchmark/Set5: already prepared" in capsys.readouterr().err


def test_each_archive_is_hashed_once_per_call(server, tmp_path, monkeypatch):
    """`data download --prepare` does not hash what the download just verified, and sets that
    share an archive (Set5, Set14 in benchmark.tar) hash it once."""
    from flowsr_lp.datasets import unpack
    checked = []
    real = unpack.verify
    monkeypatch.setattr(unpack, "verify", lambda f, *a, **k: checked.append(f.name) or real(f, *a, **k))
    root = tmp_path / "data"
    assert cli(["data", "download", "set5", "--root", str(root), "--mirror", server.url, "--prepare",
                "--quiet"]) == 0
    assert checked == []  # the download verified it
    assert cli(["data", "prepare", "set14", "b100", "--root", str(root), "--quiet"]) == 0
    assert checked == ["benchmark.tar"]
    assert (root / "benchmark/Set14/HR").is_dir() and (root / "benchmark/B100/HR").is_dir()


def test_interrupted_download_resumes_in_the_same_run(server, archives, tmp_path):
    data = archives["benchmark.tar"]
    server.cuts, server.cut_after = 1, len(data) // 3
    (path,) = download("benchmark", tmp_path, mirror=server.url, progress=False)
    assert [r["range"] for r in server.log] == [None, f"bytes={len(data) // 3}-"]
    assert path.read_bytes() == data


def test_interrupted_download_resumes_from_part_file_on_next_run(server, archives, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "RETRIES", 0)
    data = archives["DIV2K_valid_HR.zip"]
    server.cuts, server.cut_after, server.cut_only = 1, 100, "DIV2K_valid_HR.zip"
    with pytest.raises(DataError, match="run again to resume"):
        download("DIV2K-HR", tmp_path, mirror=server.url, progress=False)
    dl = tmp_path / "downloads"
    assert (dl / "DIV2K_train_HR.zip").is_file()  # the first file was not cut
    assert (dl / "DIV2K_valid_HR.zip.part").read_bytes() == data[:100]
    assert not (dl / "DIV2K_valid_HR.zip").exists()
    server.log.clear()
    download("DIV2K-HR", tmp_path, mirror=server.url, progress=False)
    assert server.log == [{"path": "/mirror/DIV2K_valid_HR.zip", "range": "bytes=100-"}]
    assert (dl / "DIV2K_valid_HR.zip").read_bytes() == data
    assert not (dl / "DIV2K_valid_HR.zip.part").exists()


@pytest.mark.parametrize("how", ["whole", "cut in this run", "cut in an earlier run", "no range support"])
def test_downloads_are_hashed_while_written_not_read_again(server, archives, tmp_path, monkeypatch, how):
    """The sha256 recorded (or checked) is the file's, also after resuming or restarting, and
    comes from hashing the bytes as they arrive: a complete download is not read again."""
    from flowsr_lp import downloader
    monkeypatch.setattr(fetch, "RETRIES", 0 if how == "cut in an earlier run" else fetch.RETRIES)
    data = archives["benchmark.tar"]
    if how != "whole":
        server.cuts, server.cut_after = 1, len(data) // 3
    if how == "no range support":
        server.ranges = False
    if how == "cut in an earlier run":
        with pytest.raises(DataError, match="run again to resume"):
            download("benchmark", tmp_path, mirror=server.url, progress=False)
    reads = []
    monkeypatch.setattr(downloader, "digests", lambda path, *a, **k: reads.append(path) or {})
    (path,) = download("benchmark", tmp_path, mirror=server.url, progress=False)
    assert path.read_bytes() == data and reads == []
    table = json.loads((tmp_path / ".checksums.json").read_text())
    assert table["benchmark.tar"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_server_without_range_support_restarts(server, archives, tmp_path):
    server.ranges = False
    dl = tmp_path / "downloads"
    dl.mkdir()
    (dl / "Flickr2K.tar.part").write_bytes(b"stale bytes from elsewhere")
    (path,) = download("Flickr2K", tmp_path, mirror=server.url, progress=False)
    assert server.log[0]["range"] == "bytes=26-" and path.read_bytes() == archives["Flickr2K.tar"]


def test_transient_errors_are_retried(server, archives, tmp_path):
    server.fail_first = 2
    (path,) = download("Set14", tmp_path, mirror=server.url, progress=False)
    assert len(server.log) == 3 and path.read_bytes() == archives["benchmark.tar"]


def _with_sha(monkeypatch, sha: str) -> None:
    from dataclasses import replace
    reg = dict(registry.REGISTRY)
    ds = reg["Flickr2K"]
    reg["Flickr2K"] = replace(ds, files=(replace(ds.files[0], sha256=sha),))
    monkeypatch.setattr(registry, "REGISTRY", reg)


def test_published_checksum_mismatch_is_not_kept(server, archives, tmp_path, monkeypatch):
    _with_sha(monkeypatch, "0" * 64)
    with pytest.raises(DataError, match="sha256 mismatch.*published.*deleted"):
        download("Flickr2K", tmp_path, mirror=server.url, progress=False)
    assert list((tmp_path / "downloads").iterdir()) == []
    _with_sha(monkeypatch, hashlib.sha256(archives["Flickr2K.tar"]).hexdigest())
    download("Flickr2K", tmp_path, mirror=server.url, progress=False)
    assert not (tmp_path / ".checksums.json").exists()  # a published digest needs no record


def test_trust_on_first_use_detects_a_changed_file(server, archives, tmp_path, capsys):
    root = tmp_path / "data"
    assert cli(["data", "download", "Set5", "--root", str(root), "--mirror", server.url, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "trust on first use" in err and ".checksums.json" in err
    recorded = json.loads((root / ".checksums.json").read_text())["benchmark.tar"]
    assert recorded["sha256"] == hashlib.sha256(archives["benchmark.tar"]).hexdigest()
    assert recorded["source"] == f"{server.url}/benchmark.tar"
    tar = root / "downloads/benchmark.tar"
    tar.write_bytes(tar.read_bytes()[:-1] + b"x")
    assert cli(["data", "prepare", "Set5", "--root", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flowsr-lp: error: ") and "sha256 mismatch" in err and "recorded on first use" in err
    assert len(err.splitlines()) == 1 and not (root / "benchmark").exists()
    with pytest.raises(DataError, match="sha256 mismatch"):
        download("Set5", root, mirror=server.url, progress=False)


def test_file_placed_by_hand_is_recorded_then_prepared(archives, tmp_path, capsys):
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads/Flickr2K.tar").write_bytes(archives["Flickr2K.tar"])
    prepare("Flickr2K", tmp_path, progress=False)
    assert "trust on first use" in capsys.readouterr().err
    assert json.loads((tmp_path / ".checksums.json").read_text())["Flickr2K.tar"]["sha256"] == \
        hashlib.sha256(archives["Flickr2K.tar"]).hexdigest()
    assert (tmp_path / "Flickr2K/Flickr2K_HR/000002.png").is_file()


def test_unreachable_host_gives_one_line_offline_error(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "data"
    rc = cli(["data", "download", "Set5", "--root", str(root), "--mirror", f"http://127.0.0.1:{port}/x", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 2  # "downloading ..." then the error
    assert err[-1].startswith(f"flowsr-lp: error: cannot reach 127.0.0.1:{port} (")
    assert f"offline? download http://127.0.0.1:{port}/x/benchmark.tar by hand into {root}/downloads/" in err[-1]
    assert err[-1].endswith("run `flowsr-lp data prepare Set5`")


def test_http_error_is_one_line(server, tmp_path):
    del server.files["mirror/Flickr2K.tar"]
    with pytest.raises(DataError, match=r"Flickr2K.tar: HTTP 404"):
        download("Flickr2K", tmp_path, mirror=server.url, progress=False)


@pytest.mark.parametrize("kind,member", [("zip", "../evil.png"), ("tar", "benchmark/Set5/../../../evil.png"),
                                         ("tar", "/tmp/evil.png"), ("link", "benchmark/Set5/HR/link.png")])
def test_unsafe_members_are_refused(tmp_path, kind, member):
    root = tmp_path / "data"
    (root / "downloads").mkdir(parents=True)
    good = {"benchmark/Set5/HR/a.png": _png(1)}
    if kind == "zip":  # a zip under the tar's name: prepare recognises archives by content
        blob = _zip({**good, member: b"x"})
    elif kind == "link":
        blob = _tar(good, links={member: "/etc/passwd"})
    else:
        blob = _tar({**good, member: b"x"})
    (root / "downloads/benchmark.tar").write_bytes(blob)
    with pytest.raises(DataError, match="refusing"):
        prepare("Set5", root, progress=False)
    assert not (root / "benchmark").exists()
    assert sorted(p.name for p in root.iterdir()) == [".checksums.json", "downloads"]
    assert not list(tmp_path.rglob("evil.png"))


def test_wrong_archive_is_reported(tmp_path):
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads/benchmark.tar").write_bytes(_tar({"other/HR/a.png": _png(1)}))
    with pytest.raises(DataError, match=r"no files under benchmark/B100/ \(top-level entries: other\)"):
        prepare("B100", tmp_path, progress=False)


def test_prepare_without_archives_names_files_and_urls(tmp_path, capsys):
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads/DIV2K_valid_HR.zip.part").write_bytes(b"x")
    assert cli(["data", "prepare", "DIV2K-HR", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "DIV2K_train_HR.zip (https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip)" in err
    assert "DIV2K_valid_HR.zip (https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip, partly downloaded)" in err
    assert "flowsr-lp data download DIV2K-HR" in err


def test_unknown_name(tmp_path, capsys):
    assert cli(["data", "download", "ImageNet", "--root", str(tmp_path)]) == 2
    assert "unknown data set 'ImageNet' (known: DIV2K, DIV2K-HR, Flickr2K, benchmark, Set5" in capsys.readouterr().err


def test_data_list(server, archives, tmp_path, capsys):
    root = tmp_path / "data"
    assert cli(["data", "list", "--root", str(root)]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["DIV2K"][1:5] == ["?", "0/8", "no", str(root / "DIV2K")]
    assert rows["Flickr2K"][4] == str(root / "Flickr2K/Flickr2K_HR")
    assert rows["Set14"][4] == str(root / "benchmark/Set14") and rows["benchmark"][4] == str(root / "benchmark")
    download("Set5", root, mirror=server.url, progress=False)
    prepare("Set5", root, progress=False)
    assert cli(["data", "list", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    rows = table(out)
    assert rows["Set5"][2:4] == ["1/1", "yes"] and rows["benchmark"][2:4] == ["1/1", "1/4"]
    assert rows["Set5"][1].endswith("KB")
    assert "trust on first use" in out and str(root / ".checksums.json") in out


def test_registry_urls():
    reg = registry.REGISTRY
    assert list(reg) == ["DIV2K", "DIV2K-HR", "Flickr2K", "benchmark", *SETS]
    assert len(reg["DIV2K"].files) == 8 and len(reg["DIV2K-HR"].files) == 2
    assert reg["DIV2K"].file("DIV2K_train_LR_bicubic_X4.zip").url() == \
        "https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_LR_bicubic_X4.zip"
    assert reg["Urban100"].files[0].url() == "https://cv.snu.ac.kr/research/EDSR/benchmark.tar"
    assert reg["Flickr2K"].files[0].url("http://m/") == "http://m/Flickr2K.tar"
    assert all(f.sha256 is None or re.fullmatch("[0-9a-f]{64}", f.sha256) for d in reg.values() for f in d.files)


@pytest.mark.parametrize("extra", [b"", b"junk"])
def test_part_file_that_is_complete_or_too_long(server, archives, tmp_path, extra):
    """A part holding the whole file (killed before the rename) gets a 416 and is kept; a longer one restarts."""
    data = archives["benchmark.tar"]
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads/benchmark.tar.part").write_bytes(data + extra)
    (path,) = download("B100", tmp_path, mirror=server.url, progress=False)
    assert path.read_bytes() == data
    assert [r["range"] for r in server.log] == [f"bytes={len(data + extra)}-"] + ([None] if extra else [])


def test_bad_mirror_scheme_and_repeated_names(server, tmp_path, capsys):
    assert cli(["data", "download", "Set5", "--root", str(tmp_path), "--mirror", "ftp2://x/y", "--quiet"]) == 2
    assert "ftp2://x/y/benchmark.tar: unknown url type" in capsys.readouterr().err
    assert cli(["data", "download", "Set5", "benchmark", "DIV2K-HR", "DIV2K", "--root", str(tmp_path),
                "--mirror", server.url, "--quiet"]) == 0
    assert len(server.log) == 9  # each archive once
    assert capsys.readouterr().err.count("already downloaded") == 0
