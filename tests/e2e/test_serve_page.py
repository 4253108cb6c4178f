"""The web page at / in headless Chromium, against `pictag serve` (single-machine mode) as a real process."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys

import httpx
import pytest
import yaml
from run_data import arcface_run, classifier_run
from serving_stack import free_port, wait_until

from conftest import jpeg_bytes, photos, subprocess_env
from pictag.testing import save_colour_objects

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
LABELS = ["cat", "rocket", "coffee", "astronaut"]


@pytest.fixture(scope="module")
def server(tiny_hf_clip, tmp_path_factory):
    yield from _serve(tmp_path_factory.mktemp("page"), {"model": f"hf:{tiny_hf_clip}", "top_k": 3})


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return save_colour_objects(tmp_path_factory.mktemp("colours"), objects=2, views=2)


@pytest.fixture(scope="module")
def run_server(tmp_path_factory, colours):
    run = classifier_run(tmp_path_factory.mktemp("runs") / "colours", colours)
    yield from _serve(tmp_path_factory.mktemp("run-page"), {"model": str(run), "top_k": 2})


@pytest.fixture(scope="module")
def gallery_server(tmp_path_factory, colours):
    from pictag.cli.main import main

    folder = tmp_path_factory.mktemp("gallery-page")
    run = arcface_run(folder / "arcface")
    assert main(["embed", str(colours), "--labelled", "--model", str(run), "--out", str(folder / "gallery"),
                 "--device", "cpu", "--workers", "0"]) == 0  # fmt: skip
    yield from _serve(folder, {"model": str(run), "gallery": str(folder / "gallery"), "knn_k": 3, "top_k": 3})


def _serve(folder, options: dict):
    """`pictag serve` with these serve.yaml options, as a process of its own; yields its URL."""
    port = free_port()
    config = folder / "serve.yaml"
    config.write_text(yaml.safe_dump({**options, "device": "cpu", "port": port}))
    log = open(folder / "serve.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "pictag", "serve", "--config", str(config)], env=subprocess_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 90, f"pictag serve ({folder})")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_choose_image_type_labels_see_ranked_bars(server, browser, tmp_path):
    image = tmp_path / "chelsea.jpg"
    image.write_bytes(jpeg_bytes(photos()["chelsea"]))
    page = browser.new_page(viewport={"width": 1000, "height": 640})
    page.goto(server)
    page.wait_for_function("document.getElementById('model').textContent.startsWith('hf:')", timeout=10_000)
    page.set_input_files("#file", str(image))
    page.fill("#labels", ", ".join(LABELS))
    page.click("#classify")
    page.wait_for_selector("#results .row", timeout=30_000)
    rows = page.locator("#results .row")
    assert rows.count() == 3
    names = [rows.nth(i).locator(".name").inner_text() for i in range(3)]
    scores = [float(rows.nth(i).locator(".score").inner_text().rstrip("%")) for i in range(3)]
    assert set(names) <= set(LABELS) and scores == sorted(scores, reverse=True)
    widths = page.eval_on_selector_all("#results .bar span", "els => els.map(e => parseFloat(e.style.width))")
    assert widths == pytest.approx(scores, abs=0.11)
    assert page.inner_text("#status").startswith("Done in")
    shot = tmp_path / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("PICTAG_SCREENSHOT"):  # how docs/img/serve-page.png is made
        shutil.copy(shot, os.environ["PICTAG_SCREENSHOT"])


def test_drop_an_image_and_see_a_clear_error(server, browser):
    page = browser.new_page()
    page.goto(server)
    page.wait_for_function("document.getElementById('model').textContent.startsWith('hf:')", timeout=10_000)
    data = base64.b64encode(jpeg_bytes(photos()["rocket"])).decode()
    page.evaluate(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "rocket.jpg", {type: "image/jpeg"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        }""",
        data,
    )
    assert page.locator("#drop img").count() == 1
    page.click("#classify")  # no labels typed and no default labels on the server
    page.wait_for_selector("#status.error", timeout=30_000)
    assert "no labels" in page.inner_text("#status")
    page.fill("#labels", "rocket, tree")
    page.click("#classify")
    page.wait_for_function("document.querySelectorAll('#results .row').length === 2", timeout=30_000)


def test_api_docs_render_offline(server, browser):
    page = browser.new_page()
    elsewhere = []

    def only_loopback(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_loopback)
    page.goto(f"{server}/docs")
    page.wait_for_selector("#swagger-ui .opblock-summary-path", timeout=20_000)
    paths = page.locator("#swagger-ui .opblock-summary-path").all_inner_texts()
    assert "/v1/classify" in [p.strip() for p in paths] and not elsewhere


def test_a_trained_run_shows_its_classes_instead_of_a_labels_box(run_server, browser, colours):
    page = browser.new_page(viewport={"width": 1000, "height": 640})
    page.goto(run_server)
    page.wait_for_function("document.getElementById('model').textContent.includes('colours')", timeout=10_000)
    assert page.inner_text("#kind") == "Classification into the model's own classes"
    assert not page.is_visible("#labels") and page.is_visible("#classes")
    assert page.locator("#classes .chip").all_inner_texts() == ["blue", "green", "grey", "red"]
    page.set_input_files("#file", str(colours / "red" / "red1_0.png"))
    page.click("#classify")
    page.wait_for_selector("#results .row", timeout=30_000)
    names = page.locator("#results .row .name").all_inner_texts()
    assert len(names) == 2 and names[0] == "red"
    assert page.inner_text("#status").startswith("Done in") and page.locator("#neighbours figure").count() == 0


def test_a_gallery_shows_the_nearest_images_as_thumbnails(gallery_server, browser, colours):
    page = browser.new_page(viewport={"width": 1000, "height": 720})
    page.goto(gallery_server)
    page.wait_for_function("document.getElementById('model').textContent.includes('arcface')", timeout=10_000)
    assert page.inner_text("#kind") == "Classification by the nearest images of a labelled gallery"
    assert not page.is_visible("#labels")
    page.set_input_files("#file", str(colours / "blue" / "blue0_1.png"))
    page.click("#classify")
    page.wait_for_selector("#neighbours figure", timeout=30_000)
    assert page.locator("#results .row .name").all_inner_texts()[0] == "blue"
    figures = page.locator("#neighbours figure")
    assert figures.count() == 3 and figures.nth(0).locator("figcaption").inner_text().startswith("blue ·")
    assert figures.nth(0).locator("img").get_attribute("alt") == "blue/blue0_1.png"
    # The thumbnails are decoded pictures, not broken images.
    widths = page.eval_on_selector_all("#neighbours img", "els => els.map(e => e.complete && e.naturalWidth)")
    assert all(w and 0 < w <= 128 for w in widths), widths
