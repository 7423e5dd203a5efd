"""The app without a browser: the request service, the views, the model cache and queues,
and the /upscale API called by gradio_client (4 clients at once; their memory is measured by
benchmarks/bench_memory.py)."""
from __future__ import annotations

import importlib.util
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from dataclasses import replace
import torch
from PIL import Image

if importlib.util.find_spec("gradio") is None:  # not imported here: seconds for the fast tier
    pytest.skip("the app extra (gradio) is not installed", allow_module_level=True)
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")  # inside gradio

from app_server import app_in_thread, photo  # noqa: E402
from flowsr_lp.app import service, views  # noqa: E402
from flowsr_lp.app.models import ModelCache, ModelChoice, registry_choices  # noqa: E402
from flowsr_lp.errors import ExplodingInverse, ImageError, UsageError  # noqa: E402
from flowsr_lp.images import read_image, to_uint8  # noqa: E402
from flowsr_lp.metrics import grid_score  # noqa: E402

LINF = ModelChoice("linf-small", "linf-small", "linf-small-lp")
SRFLOW = ModelChoice("srflow-small", "srflow-small", "srflow-small-lp")
HCFLOW = ModelChoice("hcflow-small", "hcflow-small", "hcflow-small-lp")


def wait_until(condition, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds (a failure after `timeout` seconds, not a guess at how
    long the other threads need)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def cache():
    return ModelCache("cpu", concurrency=1)


@pytest.fixture
def image(tmp_path):
    return photo(tmp_path / "photo.png", 48)


def test_registry_choices_list_bundled_models_first_with_their_priors():
    choices = registry_choices()
    by_name = {c.name: c for c in choices}
    assert choices[0].name in ("linf-small", "srflow-small")
    assert by_name["linf-small"].prior == "linf-small-lp"
    assert by_name["srflow-small"].prior == "srflow-small-lp"
    assert by_name["hcflow-small"].prior == "hcflow-small-lp"
    assert "rrdb-linf" in by_name  # released names are offered too (downloaded when picked)


def test_sampling_and_prior_outputs(cache, image):
    model = cache.get(LINF)
    s = service.Settings(scale=2.5, tau=0.8, seed=3, draws=3)
    res = service.run(model, service.plan(image, model, s, 1.0), s)
    assert [d.seed for d in res.draws] == [3, 4, 5]
    assert all(d.sr.shape == (3, 120, 120) and d.finite for d in res.draws + [res.prior])
    assert res.bicubic.shape == (3, 120, 120)
    assert res.precision in ("float32", "fp32")
    div = service.draw_diversity(res)
    assert div is not None and div > 0.5  # draws at tau 0.8 differ
    assert not torch.equal(res.draws[0].sr, res.draws[1].sr)
    rows = {r["method"]: r for r in service.scores(res)}
    assert set(rows) == {"bicubic", "tau 0.8", "learned prior"} and "PSNR" not in rows["bicubic"]
    assert rows["learned prior"]["LR-PSNR"] > rows["tau 0.8"]["LR-PSNR"]


def test_known_hr_mode_downscales_and_scores_against_the_image(cache, tmp_path):
    path = photo(tmp_path / "hr.png", 50)  # cropped to 48 (a multiple of 4) first
    model = cache.get(LINF)
    s = service.Settings(scale=4, tau=0.0, known_hr=True, draws=1)
    res = service.run(model, service.plan(path, model, s, 1.0), s)
    assert res.inputs.lr.shape[-2:] == (12, 12) and res.inputs.out_size == (48, 48)
    assert any("cropped to 48x48" in n for n in res.inputs.notes)
    hr = read_image(path)[0][:, :48, :48]
    assert torch.equal(res.inputs.hr[0], hr)
    rows = {r["method"]: r for r in service.scores(res)}
    assert all({"PSNR", "SSIM", "LR-PSNR", "grid"} <= set(r) for r in rows.values())
    assert 15 < rows["learned prior"]["PSNR"] < 60 and 0 < rows["learned prior"]["SSIM"] <= 1
    # tau 0 has no density; the prior's N(mu, sigma^2) does, and it is the API's figure
    assert "bits/dim" not in rows["tau 0"] and "bits/dim" not in rows["bicubic"]
    want = model.resolver.bits_per_dim(res.inputs.hr, res.inputs.lr, model.prior).item()
    assert rows["learned prior"]["bits/dim"] == want and 0 < want < 16


def test_the_bundled_hcflow_in_the_app(cache, tmp_path):
    """HCFlow in the page: draws, its learned prior and samples around it, scored against
    the known HR (bits/dim included)."""
    path = photo(tmp_path / "hr.png", 48)
    model = cache.get(HCFLOW)
    s = service.Settings(scale=4, tau=0.8, seed=1, draws=2, known_hr=True, variation=0.5)
    res = service.run(model, service.plan(path, model, s, 1.0), s)
    assert res.prior.sr.shape == (3, 48, 48) and all(d.finite for d in res.draws + res.prior_draws)
    rows = {r["method"]: r for r in service.scores(res)}
    assert {"tau 0.8", "learned prior", "prior, variation 0.5", "bicubic"} <= set(rows)
    assert all(math.isfinite(rows[m]["bits/dim"]) for m in ("tau 0.8", "learned prior", "prior, variation 0.5"))


def test_samples_around_the_prior(cache, tmp_path):
    """Variation > 0: `draws` samples mu + t sigma eps beside the prior's prediction, seeded
    seed, seed + 1, ..., scored with their diversity and (known HR) their bits/dim."""
    path = photo(tmp_path / "hr.png", 48)
    model = cache.get(LINF)
    s = service.Settings(scale=4, tau=0.5, seed=2, draws=3, known_hr=True, variation=0.7)
    res = service.run(model, service.plan(path, model, s, 1.0), s)
    assert [d.seed for d in res.prior_draws] == [2, 3, 4] and all(d.finite for d in res.prior_draws)
    assert not torch.equal(res.prior_draws[0].sr, res.prior_draws[1].sr)
    again = service.run(model, service.plan(path, model, s, 1.0), s)
    assert torch.equal(again.prior_draws[1].sr, res.prior_draws[1].sr)  # seeded
    rows = {r["method"]: r for r in service.scores(res)}
    around = rows["prior, variation 0.7"]
    assert around["diversity"] > 0.5 and "diversity" not in rows["learned prior"]
    assert around["diversity"] == pytest.approx(service.draw_diversity(res, around_prior=True))
    assert around["bits/dim"] != rows["learned prior"]["bits/dim"] and {"tau 0.5", "bicubic"} <= set(rows)
    zero = service.run(model, service.plan(path, model, replace(s, variation=0.0), 1.0), s := replace(s, variation=0.0))
    assert zero.prior_draws == [] and torch.equal(zero.prior.sr, res.prior.sr)
    with pytest.raises(UsageError, match="variation"):
        service.check_settings(model, replace(s, variation=-1.0))


def test_every_figure_is_of_the_image_shown():
    """A prior output overshooting [0, 1] is scored as the page shows it and the PNG holds it
    (clamped, 8-bit), as the draws are."""
    from flowsr_lp.metrics import lr_psnr, psnr, ssim

    g = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3, 24, 24, generator=g)
    lr = torch.nn.functional.avg_pool2d(hr, 2)
    raw = hr[0] + 0.4 * torch.randn(3, 24, 24, generator=g)  # well outside [0, 1] in places
    assert raw.min() < -0.2 and raw.max() > 1.2
    out = lambda seed: service.Output(raw.clone(), seed, 0.0, True)  # noqa: E731
    res = service.Result(service.Inputs(lr, (24, 24), hr), [out(0), out(1)], out(None), "m", "fp32", "cpu", 0.0, 0.5)
    png = torch.from_numpy(to_uint8(raw)).permute(2, 0, 1).float()[None] / 255
    assert torch.equal(res.prior.shown[None], png)
    rows = {r["method"]: r for r in service.scores(res)}
    for method in ("learned prior", "tau 0.5"):
        assert rows[method]["PSNR"] == pytest.approx(psnr(png, hr, shave=2).item(), abs=1e-9)
        assert rows[method]["SSIM"] == pytest.approx(ssim(png, hr).item(), abs=1e-9)
        assert rows[method]["LR-PSNR"] == pytest.approx(lr_psnr(png, lr, (2.0, 2.0)).item(), abs=1e-9)
    assert rows["learned prior"]["PSNR"] != pytest.approx(psnr(raw[None], hr, shave=2).item(), abs=1e-3)


def test_sizes_are_checked_before_decoding(cache, tmp_path):
    path = photo(tmp_path / "cut.png", 64)
    data = path.read_bytes()
    path.write_bytes(data[:200])  # header intact, pixels missing
    model = cache.get(LINF)
    with pytest.raises(ImageError, match="over this app's limit"):
        service.plan(path, model, service.Settings(scale=8), max_megapixels=0.2)  # 512x512 output
    p = service.plan(path, model, service.Settings(scale=4), max_megapixels=0.2)
    with pytest.raises(ImageError, match="cut.png: not a readable image"):
        service.read_inputs(p)


@pytest.mark.parametrize("choice, settings, message", [
    (LINF, service.Settings(scale=9), "outside 1-8"),
    (LINF, service.Settings(scale=4, out_size=(64, 64), known_hr=True), "known-HR"),
    (SRFLOW, service.Settings(scale=3), "fixed-scale: x4 only"),
    (LINF, service.Settings(draws=0), "draws"),
])
def test_bad_settings_are_usage_errors(cache, image, choice, settings, message):
    with pytest.raises(UsageError, match=message):
        service.plan(image, cache.get(choice), settings, 1.0)


def test_bad_files_are_image_errors_naming_the_file(cache, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="^notes.png: not a readable image"):
        service.plan(bad, cache.get(LINF), service.Settings(), 1.0)


def test_output_size_instead_of_scale(cache, image):
    model = cache.get(LINF)
    s = service.Settings(out_size=service.parse_size("100x70"), draws=1)
    res = service.run(model, service.plan(image, model, s, 1.0), s, prior=False)
    assert res.draws[0].sr.shape == (3, 100, 70) and res.prior is None
    with pytest.raises(UsageError):
        service.parse_size("100 by 70")


def test_exploding_inverse_is_shown_as_such_and_never_written(cache, image, tmp_path):
    model = cache.get(SRFLOW)
    s = service.Settings(scale=4, tau=3.0, draws=2)  # far too hot: the small SRFlow's inverse explodes
    res = service.run(model, service.plan(image, model, s, 1.0), s, prior=False)
    bad = [d for d in res.draws if not d.finite]
    assert bad, "expected an exploding inverse at tau 3"
    shown = views.display(bad[0].sr, bad[0].finite)
    assert not np.array_equal(shown, to_uint8(bad[0].sr))  # not the clamped image
    nonfinite = ~torch.isfinite(bad[0].sr).all(0).numpy()
    nonfinite[:60] = False  # below the banner
    marked = shown[nonfinite]
    assert len(marked) and ((marked == views.MARKER_BAD).all(1) | (marked == views.MARKER_STRIPE).all(1)).all()
    assert "exploding inverse" in service.exploding_message(bad[0])
    n_ok = len(res.draws) - len(bad)
    assert f"tau 3 ({n_ok} of {len(res.draws)} finite)" in [r["method"] for r in service.scores(res)]
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExplodingInverse, match=f"seed {bad[0].seed}"):  # the API reports it, writes nothing
        service.upscale_file(model, image, service.Settings(scale=4, tau=3.0, seed=bad[0].seed), False, out, 1.0)
    assert list(out.iterdir()) == []


def test_grid_map_is_the_grid_score_per_block():
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 16, 16)
    sr = torch.nn.functional.interpolate(lr, size=(48, 48), mode="bilinear", align_corners=False)[0]
    seams = sr.clone()
    seams[:, 2::3, :] += 0.1  # a jump across every 3-pixel patch border
    one = views.grid_map(seams, lr, region=48)
    assert one.shape == (1, 1)
    assert one.item() == pytest.approx(grid_score(seams.clamp(0, 1)[None], lr).item(), rel=1e-6)
    m = views.grid_map(seams, lr, region=24)
    assert m.shape == (2, 2) and (m > 5).all()
    assert views.grid_map(sr, lr, region=24).abs().max() < 1e-3
    with pytest.raises(ValueError):
        views.grid_map(sr, lr, region=20)


def test_zoom_crops_every_image_at_the_point_and_stays_inside():
    a = np.zeros((100, 80, 3), np.uint8)
    a[90:, 70:] = 255  # bottom-right corner
    out = views.zoom([("a", a), ("b", 255 - a)], x=79, y=99, window=20, size=80)
    assert out.shape == (80, 2 * 80 + 4, 3)
    tile = out[40:, :80]  # below the label: the corner is in the crop's bottom-right half
    assert tile[-1, -1].tolist() == [255, 255, 255] and tile[0, 0].tolist() == [0, 0, 0]


def test_models_load_once_and_each_queue_bounds_its_concurrency():
    cache = ModelCache("cpu", concurrency=2)
    with ThreadPoolExecutor(6) as pool:
        models = list(pool.map(lambda _: cache.get(LINF), range(6)))
    assert cache.loads == 1 and all(m is models[0] for m in models)
    model = models[0]
    waited, pair, release = [], threading.Barrier(2, timeout=10), threading.Event()

    def work():
        pair.wait()  # two requests run at once (a queue of one would break the barrier)
        release.wait(10)
        return threading.current_thread().name

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(model.call, work, on_wait=waited.append) for _ in range(6)]
        wait_until(lambda: model.running == 2 and model.waiting == 4)
        release.set()
        names = [f.result(10) for f in futures]
    assert model.peak_running == 2 and sorted(waited) == [1, 2, 3, 4] and model.running == model.waiting == 0
    assert len(set(names)) == 2 and all(n.startswith("model-linf-small") for n in names)  # its own 2 threads
    other = cache.get(SRFLOW)
    assert other is not model and cache.loads == 2 and other.peak_running == 0


def test_a_model_dropped_from_the_cache_still_serves_requests_holding_it():
    cache = ModelCache("cpu", concurrency=1, max_models=1)
    held = cache.get(LINF)
    started, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(held.call, lambda: started.set() or release.wait(5) and "first")
        assert started.wait(5)
        cache.get(SRFLOW)  # drops LINF while a request runs on it
        assert held.closed
        release.set()
        assert running.result() == "first"
    assert held.call(lambda: "late") == "late"  # got the model before the drop, calls after it
    assert held.running == 0 and held.waiting == 0


def test_best_temperature_map(cache, tmp_path):
    path = photo(tmp_path / "hr.png", 72)
    r = service.best_temperatures(cache.get(LINF), path, service.Settings(scale=3), 1.0, crop=72, region=24)
    assert torch.tensor(r["map"]).shape == (3, 3)
    assert r["per_region_score"] >= r["best_single_score"] - 1e-9  # PSNR: per-region choice is never worse


# ---- the /upscale API -----------------------------------------------------------------
def reference(path: Path, use_prior: bool, seed: int, scale: float = 4, tau: float = 0.8) -> np.ndarray:
    """What the library gives for the same call, without the app."""
    from flowsr_lp import SuperResolver, load_flow, load_prior

    flow = load_flow("linf-small")
    resolver = SuperResolver(flow, load_prior("linf-small-lp") if use_prior else None)
    lr = read_image(path)[0][None]
    sr = resolver.upscale(lr, scale=scale, tau=None if use_prior else tau, generator=torch.Generator().manual_seed(seed))
    return to_uint8(sr[0])


@pytest.mark.slow
def test_api_four_clients_at_once(tmp_path):
    from gradio_client import Client, handle_file

    path = photo(tmp_path / "lr.png", 40)
    calls = [(True, 0), (False, 0), (False, 1), (True, 5)]
    with app_in_thread(concurrency=2) as (app, url):
        clients = [Client(url, verbose=False) for _ in calls]
        api = clients[0].view_api(print_info=False, return_format="dict")["named_endpoints"]["/upscale"]
        assert [p["parameter_name"] for p in api["parameters"]] == ["image", "scale", "tau", "use_prior", "seed"]
        with ThreadPoolExecutor(len(calls)) as pool:
            outs = list(pool.map(lambda ca: ca[0].predict(handle_file(str(path)), 4, 0.8, ca[1][0], ca[1][1],
                                                          api_name="/upscale"), zip(clients, calls)))
        model = app.cache.get(app.default)
        assert app.cache.loads == 1 and model.peak_running <= 2
        bad = tmp_path / "bad.png"
        bad.write_text("not an image")
        with pytest.raises(Exception, match="bad.png: not a readable image") as err:
            clients[0].predict(handle_file(str(bad)), 4, 0.8, True, 0, api_name="/upscale")
        assert "Traceback" not in str(err.value)
        with pytest.raises(Exception, match="outside 1-8"):
            clients[0].predict(handle_file(str(path)), 9, 0.8, True, 0, api_name="/upscale")
    for (use_prior, seed), out in zip(calls, outs):
        got = np.asarray(Image.open(out))
        assert got.shape == (160, 160, 3)
        np.testing.assert_array_equal(got, reference(path, use_prior, seed))
    assert not np.array_equal(np.asarray(Image.open(outs[1])), np.asarray(Image.open(outs[2])))  # seeds differ


def test_queue_reports_the_requests_ahead_and_passes_errors_on():
    model = ModelCache("cpu", concurrency=1).get(LINF)
    release, seen = threading.Event(), []
    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(model.call, lambda: release.wait(5))
        wait_until(lambda: model.running == 1)
        waiter = pool.submit(model.call, lambda: "done", on_wait=seen.append)
        wait_until(lambda: seen == [1])
        assert model.waiting == 1 and not waiter.done()
        release.set()
        assert holder.result(5) and waiter.result(5) == "done"
    with pytest.raises(ZeroDivisionError):
        model.call(lambda: 1 / 0)
    assert model.running == 0 and model.waiting == 0


@pytest.mark.slow
def test_precision_is_part_of_the_model_key_and_shown(image):
    fp32, bf16 = ModelCache("cpu"), ModelCache("cpu", precision="bf16")
    assert fp32.key(LINF) != bf16.key(LINF)
    model = bf16.get(LINF)
    s = service.Settings(scale=2, draws=1)
    res = service.run(model, service.plan(image, model, s, 1.0), s)
    assert res.precision == "bf16" and res.prior.finite
    ref = service.run(fp32.get(LINF), service.plan(image, fp32.get(LINF), s, 1.0), s)
    assert ref.precision == "fp32"
    assert (res.prior.sr - ref.prior.sr).abs().max() < 0.1  # close, not bit-equal
    with pytest.raises(UsageError):
        ModelCache("cpu", precision="fp8")


@pytest.mark.slow
def test_page_handlers_without_a_browser(tmp_path):
    import gradio as gr

    from flowsr_lp.app.ui import LOCAL, App, AppConfig
    from flowsr_lp.hub.registry import WEIGHTS

    image = photo(tmp_path / "in.png", 40)
    app = App(AppConfig(allow_local_paths=False))
    try:
        def progress(frac, desc=None):
            pass

        out = app.on_run(str(image), "linf-small", "", "", False, 3, "", 0.5, 1, 2, progress=progress)
        status, gallery, prior_img, table, pair, shown, heat, files, pick, prior_gallery = out
        assert prior_gallery == []  # variation 0: the prior's prediction only
        assert "**linf-small** x3" in status and "40x40 -> 120x120" in status and "fp32" in status
        assert [g[0].shape for g in gallery] == [(120, 120, 3)] * 2 and prior_img.shape == (120, 120, 3)
        assert pair[0] is shown["tau"] and pair[1] is shown["learned prior"]
        assert {"bicubic", "tau", "learned prior"} == set(shown) and heat.ndim == 3
        assert sorted(Path(f).name for f in files) == ["in_prior.png", "in_tau0.5_seed1.png", "in_tau0.5_seed2.png"]
        assert "| learned prior |" in table
        out = app.on_run(str(image), "linf-small", "", "", False, 3, "", 0.5, 1, 2, 0.5, progress=progress)
        status, prior_gallery, files = out[0], out[9], out[7]
        assert [c for _, c in prior_gallery] == ["variation 0.5, seed 1", "variation 0.5, seed 2"]
        assert {"in_prior_var0.5_seed1.png", "in_prior_var0.5_seed2.png"} <= {Path(f).name for f in files}
        assert "around the prior:" in status and "| prior, variation 0.5 |" in out[3]
        fig, text = app.on_temperature_map(str(photo(tmp_path / "hr.png", 72)), "linf-small", "", "", 3, 0,
                                           progress=progress)
        assert fig.ndim == 3 and "downscaled x3" in text and "Best single tau" in text
        with pytest.raises(gr.Error, match="local checkpoints are off"):
            app.on_run(str(image), LOCAL, str(WEIGHTS / "linf-small.safetensors"), "", False, 3, "", 0.5, 1, 1,
                       progress=progress)
        with pytest.raises(gr.Error, match="upload, paste or pick"):
            app.on_run(None, "linf-small", "", "", False, 3, "", 0.5, 1, 1, progress=progress)
    finally:
        app.close()
    local = App(AppConfig())
    try:
        _, scale, size, info = local.on_model(LOCAL, str(WEIGHTS / "srflow-small.safetensors"), "")
        assert "fixed x4" in info and "no learned prior" in info and scale["value"] == 4
        with pytest.raises(gr.Error, match="no such checkpoint"):
            local.on_model(LOCAL, str(tmp_path / "missing.pth"), "")
    finally:
        local.close()
