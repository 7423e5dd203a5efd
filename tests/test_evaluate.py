"""`flowsr-lp evaluate` and `temperature-map` end to end, the HTML report in a real browser."""
import csv
import json
import math
import shutil
import subprocess
import sys

import pytest

from flowsr_lp import save_flow
from flowsr_lp.cli import main
from flowsr_lp.evaluate import resolve_dataset
from flowsr_lp.flows.srflow import SRFlow

from conftest import DATA
from helpers import blocky_linf, explode_at_tau, natural_images, tiny_srflow


@pytest.fixture(scope="module")
def set5_two(tmp_path_factory):
    """Two Set5 images (the real ones when ../shared is there, else photos) as a set folder."""
    d = tmp_path_factory.mktemp("sets") / "Set5mini" / "HR"
    d.mkdir(parents=True)
    src = DATA / "Set5" / "HR"
    if src.is_dir():
        for name in ("bird.png", "butterfly.png"):
            shutil.copy(src / name, d / name)
    else:
        natural_images(d, n=2, size=120)
    return d.parent


@pytest.fixture(scope="module")
def flow_file(tmp_path_factory):
    return str(save_flow(blocky_linf(), tmp_path_factory.mktemp("f") / "blocky.safetensors"))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_evaluate_writes_every_output(tmp_path, set5_two, flow_file, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--flow", flow_file, "--data", str(set5_two), "--scales", "2", "3", "--tau", "0", "0.8",
                 "--runs", "2", "--no-lpips", "-o", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    for name in ("results.csv", "summary.json", "table.md", "report.html", "perception_distortion.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    rows = _rows(out / "results.csv")
    assert len(rows) == 2 * 2 * (1 + 2)  # images x scales x (tau 0 once + tau 0.8 twice)
    assert {r["seed"] for r in rows if r["tau"] == "0.8"} == {"0", "1"}
    for r in rows:
        for k in ("psnr", "ssim", "lr_psnr", "grid"):
            assert math.isfinite(float(r[k]))
    summary = json.loads((out / "summary.json").read_text())
    groups = {(e["scale"], e["method"]): e for e in summary["summary"]}
    assert groups[(2.0, "tau=0.8")]["grid"] > 5 + groups[(2.0, "tau=0")]["grid"]  # the blocky flow's grid
    assert groups[(3.0, "tau=0.8")]["diversity"] > 0 and groups[(3.0, "tau=0")]["diversity"] is None
    assert summary["meta"]["seeds"] == {"tau run 0": 0, "tau run 1": 1}
    md = (out / "table.md").read_text()
    assert "| Method | Images | PSNR (↑) | SSIM (↑) | LR-PSNR (↑) | %Inf (↓)" in md and "Set5mini x3" in md
    html = (out / "report.html").read_text()
    assert html.count("<img") == 1 + 2 * 2 * 4  # plot + (HR, bicubic, tau 0, tau 0.8) per image and scale


def test_exploding_runs_are_counted_not_averaged(tmp_path, set5_two, capsys, monkeypatch):
    explode_at_tau(monkeypatch, SRFlow)
    flow = str(save_flow(tiny_srflow(4), tmp_path / "s.safetensors"))
    out = tmp_path / "eval"
    code = main(["evaluate", "--flow", flow, "--data", str(set5_two), "--scales", "2", "4", "--tau", "0.5", "10",
                 "--runs", "2", "--no-lpips", "--protocol", "srflow", "-o", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert any("fixed-scale x4" in n for n in summary["notes"])
    by_method = {e["method"]: e for e in summary["summary"]}
    assert by_method["tau=10"]["inf_rate"] == 100.0 and by_method["tau=10"]["psnr"] is None
    assert by_method["tau=0.5"]["inf_rate"] == 0.0 and math.isfinite(by_method["tau=0.5"]["psnr"])


def test_bicubic_baseline_row(tmp_path, set5_two, flow_file, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--flow", flow_file, "--data", str(set5_two), "--scale", "2", "--tau", "0",
                 "--bicubic", "--no-lpips", "-o", str(out), "--device", "cpu"]) == 0
    summary = {e["method"]: e for e in json.loads((out / "summary.json").read_text())["summary"]}
    assert set(summary) == {"bicubic", "tau=0"}
    bic = summary["bicubic"]
    assert bic["inf_rate"] == 0.0 and math.isfinite(bic["psnr"]) and bic["psnr"] != summary["tau=0"]["psnr"]
    assert "| bicubic |" in (out / "table.md").read_text() and "<td>bicubic</td>" in (out / "report.html").read_text()


def test_unknown_data_set_is_a_clear_error(tmp_path, flow_file, capsys):
    assert main(["evaluate", "--flow", flow_file, "--data", "NoSuchSet", "--no-lpips", "-o", str(tmp_path)]) == 2
    assert "flowsr-lp data download NoSuchSet" in capsys.readouterr().err


def test_named_sets_resolve_in_the_prepared_layout(tmp_path, monkeypatch):
    (tmp_path / "benchmark" / "Set14" / "HR").mkdir(parents=True)
    (tmp_path / "benchmark" / "Set14" / "LR_bicubic" / "X2").mkdir(parents=True)
    monkeypatch.setenv("FLOWSR_LP_DATA", str(tmp_path / "benchmark"))
    ds = resolve_dataset("Set14")
    assert ds.hr == tmp_path / "benchmark" / "Set14" / "HR" and ds.lr.name == "LR_bicubic"


@pytest.mark.slow
def test_two_processes_give_the_same_report(tmp_path, set5_two, flow_file):
    args = ["--flow", flow_file, "--data", str(set5_two), "--scales", "2", "--tau", "0.8", "--runs", "2",
            "--no-lpips", "--device", "cpu"]
    assert main(["evaluate", *args, "-o", str(tmp_path / "one")]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    r = subprocess.run(torchrun + ["-m", "flowsr_lp", "evaluate", *args, "-o", str(tmp_path / "two")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    key = lambda row: (row["image"], row["method"], row["run"])  # noqa: E731
    one = sorted(_rows(tmp_path / "one" / "results.csv"), key=key)
    two = sorted(_rows(tmp_path / "two" / "results.csv"), key=key)
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert abs(float(a["psnr"]) - float(b["psnr"])) < 1e-6
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["meta"]["processes"] == 2


LOAD_CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok + '/' + imgs.length;
});
</script>"""


@pytest.mark.slow
def test_report_opens_in_headless_chromium(tmp_path, set5_two, flow_file):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    out = tmp_path / "eval"
    assert main(["evaluate", "--flow", flow_file, "--data", str(set5_two), "--scales", "2", "--tau", "0.8",
                 "--no-lpips", "-o", str(out), "--device", "cpu"]) == 0
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=5000"]
    report = (out / "report.html").read_text()
    assert "<script" not in report  # the user's report carries no test code
    probe = out / "probe.html"  # the report plus a script that counts the images that decoded
    probe.write_text(report.replace("</body>", LOAD_CHECK + "</body>"))
    dom = subprocess.run(flags + [f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    url = (out / "report.html").as_uri()
    n_img = report.count("<img")
    assert f'data-images-loaded="{n_img}/{n_img}"' in dom  # every image decoded with a non-zero size
    shot = out / "report.png"
    subprocess.run(flags + [f"--user-data-dir={tmp_path / 'p2'}", "--window-size=1200,1600", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot)
    assert img.size == (1200, 1600)
    assert len(set(img.convert("L").resize((60, 80)).tobytes())) > 20  # not a blank page


def test_temperature_map(tmp_path, flow_file):
    img = natural_images(tmp_path / "img", n=1, size=96) / "img0.png"
    out = tmp_path / "tm"
    assert main(["temperature-map", str(img), "--flow", flow_file, "--scale", "2", "--metric", "psnr",
                 "--taus", "0", "0.2", "0.5", "--region", "24", "-o", str(out)]) == 0
    s = json.loads((out / "temperature_map.json").read_text())
    assert len(s["map"]) == 4 and len(s["map"][0]) == 4 and all(t in (0, 0.2, 0.5) for row in s["map"] for t in row)
    assert s["per_region_score"] >= s["best_single_score"] - 1e-9  # PSNR: per-region choice never worse
    for name in ("temperature_map.png", "composite.png", "temperature_map.csv"):
        assert (out / name).is_file()
