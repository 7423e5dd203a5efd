"""Download tests: a file server on 127.0.0.1 (Range requests; on demand a cut connection or an
HTTP error status; every request logged), a private model cache, and registry tables of test
entries that point at the shared reference checkpoints."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import REFERENCE, need
from flowsr_lp.hub import cache, download, registry


class FileServer:
    def __init__(self, files: dict[str, bytes] | None = None):
        self.files = dict(files or {})
        self.cut = {}          # path -> bytes sent before closing (once)
        self.status = {}       # path -> HTTP status to answer instead
        self.requests = []     # (path, Range header or None)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append((path, self.headers.get("Range")))
                if path in server.status:
                    self.send_error(server.status[path])
                    return
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                n = server.cut.pop(path, None)
                if n is not None:
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def gets(self, path: str) -> list:
        return [r for p, r in self.requests if p == path]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


FLOW, PRIOR = "linf-patch-edsr-baseline.pth", "linf-patch-edsr-baseline-LP.pth"
UNREACHABLE = "http://127.0.0.1:9"   # the discard port: connection refused


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def entry(name, file, family="linf", **kw):
    return {"name": name, "family": family, "description": "test model", "paper": "-", "dataset": "-",
            "scales": [1, 4], "file": file, "license": "-", **kw}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWSR_LP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLOWSR_LP_MIRROR", raising=False)
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    return tmp_path / "home"


@pytest.fixture
def ref_bytes():
    return {name: need(REFERENCE / name).read_bytes() for name in (FLOW, PRIOR)}


@pytest.fixture
def server(ref_bytes):
    with FileServer({f"/m/{k}": v for k, v in ref_bytes.items()}) as s:
        yield s


@pytest.fixture
def use_table(tmp_path, monkeypatch):
    def use(*entries):
        path = tmp_path / f"models-{len(list(tmp_path.glob('models-*.json')))}.json"
        path.write_text(json.dumps({"models": list(entries)}))
        monkeypatch.setattr(registry, "TABLE", path)
        return path
    return use


def cached_files(home):
    return sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file()
                  and ".locks" not in p.parts and p.name != cache.RECORD)
