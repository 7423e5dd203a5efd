"""The app in a real headless Chromium (Playwright driving Debian's system chromium: browser
downloads are not possible here). Upload an image, run temperature sampling and the learned
prior, wait for both, check their sizes, click to zoom, save a screenshot.

The screenshot goes to $FLOWSR_LP_ARTIFACTS (a folder) when set, else to the test's tmp_path."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

for _name, _what in (("gradio", "the app extra (gradio)"), ("playwright", "playwright")):
    if importlib.util.find_spec(_name) is None:  # not imported at collection: seconds for the fast tier
        pytest.skip(f"{_what} is not installed", allow_module_level=True)

from app_server import app_in_thread, photo  # noqa: E402
from conftest import under_ci  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]


@pytest.fixture
def chromium() -> str:
    """The system chromium; without it skip, or fail under CI=true (.ci/run installs it)."""
    if not Path(CHROMIUM).is_file():
        msg = "no chromium at /usr/bin/chromium (apt-get install chromium)"
        if under_ci():
            pytest.fail(f"{msg}; CI=true, and .ci/run installs it", pytrace=False)
        pytest.skip(msg)
    return CHROMIUM


def natural_size(page, selector: str) -> list[list[int]]:
    return page.eval_on_selector_all(selector, "es => es.map(e => [e.naturalWidth, e.naturalHeight])")


def test_upload_sample_and_prior_in_chromium(tmp_path, chromium):
    artifacts = Path(os.environ.get("FLOWSR_LP_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    image = photo(tmp_path / "astronaut.png", 64)
    outside = []
    from playwright.sync_api import sync_playwright  # slow tier only

    with app_in_thread() as (app, url), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(url) else None)
            page.goto(url)
            page.wait_for_selector("#run")
            page.locator("#input-image input[type=file]").set_input_files(str(image))
            page.wait_for_selector("#input-image img")
            page.get_by_label("Draws").first.fill("3")
            page.click("#run")
            page.wait_for_selector("#prior img", timeout=120_000)
            page.wait_for_function("document.querySelectorAll('#draws img').length >= 3", timeout=60_000)
            page.wait_for_selector("#downloads a", timeout=30_000)
            status = page.locator("#status").inner_text()
            prior_size = natural_size(page, "#prior img")
            draw_sizes = natural_size(page, "#draws img")
            box = page.locator("#prior img").bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
            page.get_by_role("tab", name="Zoom").click()
            page.wait_for_selector("#zoom img", timeout=30_000)
            zoom_size = natural_size(page, "#zoom img")
            page.get_by_role("tab", name="Compare").click()
            page.screenshot(path=str(artifacts / "app.png"), full_page=True)
        finally:
            browser.close()
    assert prior_size == [[256, 256]]
    assert draw_sizes[:3] == [[256, 256]] * 3
    assert "linf-small x4" in status and "64x64 -> 256x256" in status and "precision" in status
    assert "diversity of 3 draws" in status
    assert zoom_size == [[3 * 192 + 2 * 4, 192]]  # bicubic | tau | learned prior, 48-pixel crops x4
    assert outside == []  # nothing fetched from the internet
    assert (artifacts / "app.png").stat().st_size > 10_000
