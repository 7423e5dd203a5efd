"""Models by name: registry, downloads into the verified cache, resolution of paths, names,
URLs and hf:// paths. Downloads come from a server on 127.0.0.1 (tests/hub_server.py)."""
from __future__ import annotations

import errno
import logging
import shutil
import subprocess
import zipfile

import pytest

import flowsr_lp
from flowsr_lp import downloader
from flowsr_lp.errors import CheckpointError, DownloadError, ModelNotFoundError
from flowsr_lp.hub import download, registry
from flowsr_lp.hub.resolve import flow_for_prior, resolve, status

from conftest import REFERENCE, need
from hub_server import FLOW, PRIOR, UNREACHABLE, cached_files, entry, git_blob_id, home, ref_bytes, server, use_table  # noqa: F401

# ---- the real registry -------------------------------------------------------------------------
def test_registry_has_every_released_model_with_its_fields():
    names = set(registry.models())
    assert {"edsr-baseline-linf", "edsr-baseline-linf-lp", "rrdb-linf", "rrdb-linf-lp", "srflow-df2k-4x",
            "srflow-df2k-8x", "srflow-celeba-8x", "srflow-lp-df2k-4x", "linf-small", "linf-small-lp",
            "srflow-small", "srflow-small-lp"} <= names
    assert any("rdn" in n for n in names) and any("swinir" in n for n in names)
    blobs = {"edsr-baseline-linf": "079b74f0da7e23d37e7d1d395d1185ceaa5c80fa",
             "edsr-baseline-linf-lp": "71d80edaf869e2b08f559c56ae5b1d305fe36e25",
             "rrdb-linf": "c3c154628900c2f7c1a02ec473d9259c52b31d1d",
             "rrdb-linf-lp": "442a54388ee4517c49bf29ff74418388fde558eb"}
    for name, blob in blobs.items():
        e = registry.lookup(name)
        assert e.checksum == f"git-sha1:{blob}"
        assert e.urls[0].startswith("https://raw.githubusercontent.com/liyuantsao/FlowSR-LP/"
                                    "8575f06e21cb9743ee26722060a64cefa8fc2490/LINF-LP/")
        assert e.urls[0].endswith("/" + e.file)
    for name in registry.models():
        e = registry.lookup(name)
        assert e.kind == ("prior" if e.family.endswith("-lp") else "flow")
        if e.kind == "prior":
            assert registry.lookup(e.flow).kind == "flow"
    assert [registry.lookup(f"srflow-{n}").member for n in ("df2k-4x", "df2k-8x", "celeba-8x")] == \
        ["SRFlow_DF2K_4X.pth", "SRFlow_DF2K_8X.pth", "SRFlow_CelebA_8X.pth"]
    assert registry.lookup("srflow-lp-df2k-4x").gdrive == "19w9dDQdgOGRbmP-x2eAb-BM81G2adf4_"
    files = [e.file for e in registry.models().values()]
    assert len(files) == len(set(files)), "two entries would share a cache file"


def test_git_blob_id_is_the_one_git_computes(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    f = tmp_path / "x.bin"
    f.write_bytes(b"\x00flow\n" * 1000)
    ours = downloader.digests(f)["git-sha1"]
    assert ours == subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True).stdout.strip()
    assert ours == git_blob_id(f.read_bytes())


def test_unknown_name_suggests_close_ones(home):
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'rrdb-lnif-lp'; did you mean rrdb-linf-lp"):
        resolve("rrdb-lnif-lp")
    with pytest.raises(ModelNotFoundError, match=r"no such checkpoint file \(or a model name: rrdb-linf"):
        resolve("models/rrdb-linf.pth")


def test_prior_names_its_flow_and_kinds_are_checked(home):
    assert flow_for_prior("rrdb-linf-lp") == "rrdb-linf"
    assert flow_for_prior("srflow-lp-df2k-4x") == "srflow-df2k-4x"
    assert flow_for_prior("rrdb-linf") is None and flow_for_prior(None) is None
    with pytest.raises(CheckpointError, match="rrdb-linf-lp is a latent module for rrdb-linf, not a flow"):
        flowsr_lp.load_flow("rrdb-linf-lp")
    assert not home.exists() or cached_files(home) == []  # refused before any download


def test_bundled_models_resolve_without_download(home):
    flow = flowsr_lp.load_flow("linf-small")
    prior = flowsr_lp.load_prior("linf-small-lp")
    flowsr_lp.SuperResolver(flow, prior)
    assert status(registry.lookup("srflow-small"))["cached"] == "bundled"
    assert not home.exists() or cached_files(home) == []


# ---- URLs --------------------------------------------------------------------------------------
def test_url_loads_then_comes_from_the_cache(home, server, caplog):
    url = f"{server.url}/m/{FLOW}"
    with caplog.at_level(logging.WARNING, logger="flowsr_lp.hub"):
        flow = flowsr_lp.load_flow(url)
    assert "recorded sha256" in caplog.text and "unverified" in caplog.text
    again = flowsr_lp.load_flow(url)
    assert len(server.gets(f"/m/{FLOW}")) == 1
    for a, b in zip(flow.state_dict().values(), again.state_dict().values()):
        assert (a == b).all()
    (path,) = [home / p for p in cached_files(home)]
    assert path.name == FLOW and path.read_bytes() == need(REFERENCE / FLOW).read_bytes()


def test_tampered_url_download_is_detected_on_load(home, server):
    url = f"{server.url}/m/{FLOW}"
    path = resolve(url)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="sha256 mismatch: expected [0-9a-f]{64}, got [0-9a-f]{64}"):
        flowsr_lp.load_flow(url)


@pytest.mark.parametrize("code", [404, 500])
def test_http_errors_are_one_line_and_leave_nothing(home, server, code):
    server.status["/m/x.pth"] = code
    hint = "; get the file elsewhere and save it as .*/urls/.*/x.pth$" if code == 404 else ""
    with pytest.raises(DownloadError, match=f"HTTP {code} .*{hint}") as info:
        resolve(f"{server.url}/m/x.pth")
    assert "\n" not in str(info.value)
    assert [p for p in cached_files(home) if not p.endswith(".part")] == []
    assert len(server.gets("/m/x.pth")) == (1 if code == 404 else download.RETRIES + 1)


def test_unwritable_cache_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FLOWSR_LP_HOME", str(tmp_path / "file" / "cache"))
    with pytest.raises(DownloadError, match="cannot create .*; set \\$FLOWSR_LP_HOME to a writable folder"):
        resolve("rrdb-linf")


def test_unreachable_host_says_what_to_fetch_and_where(home):
    with pytest.raises(ModelNotFoundError, match=r"cannot reach 127.0.0.1:9 .*offline\? fetch "
                                                 r"http://127.0.0.1:9/x/model.pth by hand and save it as .*/urls/"):
        resolve(f"{UNREACHABLE}/x/model.pth")


# ---- registry entries: mirror, checksums, resume, archives, full disk -----------------------------
def test_mirror_serves_every_entry_and_pinned_hash_is_checked(home, server, use_table, ref_bytes, monkeypatch):
    use_table(entry("ref-linf", FLOW, urls=[f"{UNREACHABLE}/{FLOW}"], checksum=f"git-sha1:{git_blob_id(ref_bytes[FLOW])}"),
              entry("ref-linf-lp", PRIOR, family="linf-lp", flow="ref-linf", gdrive="some-drive-id"))
    with pytest.raises(ModelNotFoundError, match=f"fetch {UNREACHABLE}/{FLOW} by hand and save it as .*models/{FLOW}"):
        resolve("ref-linf")
    monkeypatch.setenv("FLOWSR_LP_MIRROR", f"{server.url}/m/")
    flowsr_lp.SuperResolver(flowsr_lp.load_flow("ref-linf"), flowsr_lp.load_prior("ref-linf-lp"))
    assert len(server.gets(f"/m/{FLOW}")) == 1 and len(server.gets(f"/m/{PRIOR}")) == 1
    assert cached_files(home) == sorted([f"models/{FLOW}", f"models/{PRIOR}"])
    rows = {e: status(registry.lookup(e)) for e in ("ref-linf", "ref-linf-lp")}
    assert rows["ref-linf"]["verified"] == "yes (git-sha1)" and rows["ref-linf"]["size"] == len(ref_bytes[FLOW])
    assert rows["ref-linf-lp"]["verified"] == "unverified (sha256 recorded)"


def test_wrong_checksum_leaves_nothing_in_the_cache(home, server, use_table, monkeypatch):
    wrong = "0" * 40
    use_table(entry("ref-linf", FLOW, urls=[f"{server.url}/m/{FLOW}"], checksum=f"git-sha1:{wrong}"))
    with pytest.raises(DownloadError, match=f"git-sha1 mismatch: expected {wrong}, got [0-9a-f]{{40}}; the download "
                                            "was deleted") as info:
        flowsr_lp.load_flow("ref-linf")
    assert "\n" not in str(info.value)
    assert cached_files(home) == []


def test_tampered_cache_entry_is_detected_on_load(home, server, use_table, ref_bytes):
    use_table(entry("ref-linf", FLOW, urls=[f"{server.url}/m/{FLOW}"],
                    checksum=f"git-sha1:{git_blob_id(ref_bytes[FLOW])}"))
    path = resolve("ref-linf")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DownloadError, match="git-sha1 mismatch.*changed after download; delete it"):
        flowsr_lp.load_flow("ref-linf")
    assert len(server.gets(f"/m/{FLOW}")) == 1


def test_resumes_after_a_cut_connection(home, server, use_table, ref_bytes):
    use_table(entry("ref-linf", FLOW, urls=[f"{server.url}/m/{FLOW}"],
                    checksum=f"git-sha1:{git_blob_id(ref_bytes[FLOW])}"))
    server.cut[f"/m/{FLOW}"] = 300_000
    path = resolve("ref-linf")
    assert path.read_bytes() == ref_bytes[FLOW]
    assert server.gets(f"/m/{FLOW}") == [None, "bytes=300000-"]


def test_an_interrupted_download_resumes_on_the_next_run(home, server, use_table, ref_bytes, monkeypatch):
    use_table(entry("ref-linf", FLOW, urls=[f"{server.url}/m/{FLOW}"],
                    checksum=f"git-sha1:{git_blob_id(ref_bytes[FLOW])}"))
    monkeypatch.setattr(download, "RETRIES", 0)
    server.cut[f"/m/{FLOW}"] = 123_456
    with pytest.raises(DownloadError, match="download failed after 1 tries .*run again to resume from byte 123456"):
        resolve("ref-linf")
    assert cached_files(home) == [f"models/{FLOW}.part", f"models/{FLOW}.part.json"]  # + the version resumed
    assert resolve("ref-linf").read_bytes() == ref_bytes[FLOW]
    assert server.gets(f"/m/{FLOW}") == [None, "bytes=123456-"]
    assert cached_files(home) == [f"models/{FLOW}"]


def test_full_disk_is_one_line_and_leaves_nothing(home, server, use_table, monkeypatch):
    use_table(entry("ref-linf", FLOW, urls=[f"{server.url}/m/{FLOW}"]))

    def full(f, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(downloader, "_write", full)
    with pytest.raises(DownloadError, match=r"disk full while writing .*FLOWSR_LP_HOME"):
        resolve("ref-linf")
    assert cached_files(home) == []


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path.read_bytes()


def test_archive_members_are_extracted_and_a_missing_member_is_one_line(home, server, use_table, tmp_path):
    srflow = need(REFERENCE / "srflow-4x-nb4-k2.pth").read_bytes()
    server.files["/m/pretrained_models.zip"] = _zip(tmp_path / "a.zip", {"pretrained_models/SRFlow_DF2K_4X.pth": srflow,
                                                                        "pretrained_models/RRDB_DF2K_4X.pth": b"x"})
    zipped = dict(urls=[f"{server.url}/m/pretrained_models.zip"], archive="pretrained_models.zip")
    use_table(entry("sr4", "SRFlow_DF2K_4X.pth", family="srflow", member="SRFlow_DF2K_4X.pth", **zipped),
              entry("sr8", "SRFlow_DF2K_8X.pth", family="srflow", member="SRFlow_DF2K_8X.pth", **zipped))
    flow = flowsr_lp.load_flow("sr4", taps=[0, 1, 2, 3])
    assert flow.fixed_scale == 4
    with pytest.raises(DownloadError, match="no member SRFlow_DF2K_8X.pth in the archive \\(it holds "
                                            "RRDB_DF2K_4X.pth, SRFlow_DF2K_4X.pth\\)"):
        resolve("sr8")
    assert len(server.gets("/m/pretrained_models.zip")) == 1  # the archive is downloaded once
    assert cached_files(home) == ["archives/pretrained_models.zip", "models/SRFlow_DF2K_4X.pth"]
    assert status(registry.lookup("sr8"))["cached"] == "archive"


def test_google_drive_entries_go_through_gdown(home, use_table, monkeypatch, ref_bytes):
    gdown = pytest.importorskip("gdown")
    calls = []

    def fake_download(id, output, quiet, resume, retries):
        calls.append(id)
        with open(output, "wb") as f:
            f.write(ref_bytes[PRIOR])
        return output
    monkeypatch.setattr(gdown, "download", fake_download)
    use_table(entry("ref-lp", PRIOR, family="linf-lp", flow="x", gdrive="drive-id"))
    flowsr_lp.load_prior("ref-lp")
    flowsr_lp.load_prior("ref-lp")
    assert calls == ["drive-id"]

    def no_network(**kw):
        raise gdown.exceptions.DownloadError("Download failed after 3 retries") from OSError("no route")
    monkeypatch.setattr(gdown, "download", no_network)
    use_table(entry("other-lp", "other.pth", family="linf-lp", flow="x", gdrive="id2"))
    with pytest.raises(ModelNotFoundError, match="cannot reach drive.google.com .*fetch https://drive.google.com/file/"
                                                 "d/id2/view by hand and save it as .*/models/other.pth$"):
        resolve("other-lp")

    def quota(**kw):
        raise gdown.exceptions.FileURLRetrievalError("Too many users have viewed or downloaded this file recently.\nx")
    monkeypatch.setattr(gdown, "download", quota)
    with pytest.raises(DownloadError, match="Google Drive file id2: Too many users .* recently.; get the file "
                                            "elsewhere and save it as .*/models/other.pth$"):
        resolve("other-lp")


# ---- Hugging Face -----------------------------------------------------------------------------
@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding owner/repo's weights/flow.pth at revision main."""
    constants = pytest.importorskip("huggingface_hub.constants")
    root = tmp_path / "hf"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = root / "models--owner--repo" / "snapshots" / commit / "weights"
    snap.mkdir(parents=True)
    shutil.copy(need(REFERENCE / FLOW), snap / "flow.pth")
    (root / "models--owner--repo" / "refs").mkdir()
    (root / "models--owner--repo" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


def test_hf_paths_load_from_the_hugging_face_cache(home, hf_cache):
    flow = flowsr_lp.load_flow("hf://owner/repo/weights/flow.pth")
    assert flow.kind == "linf-patch"
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache .*offline.*by hand") as info:
        flowsr_lp.load_flow("hf://owner/repo/weights/other.pth")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelNotFoundError, match="expected hf://OWNER/REPO/FILE"):
        flowsr_lp.load_flow("hf://owner/repo")
    assert not home.exists() or cached_files(home) == []
