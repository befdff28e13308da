"""The web playground in a real browser: Debian's chromium driven by Playwright (``executable_path``; ``playwright
install`` cannot download browsers here). Load ``/``, pick ``digits``, type a prompt, generate, see the image and a
preview; start a long job and cancel it."""

from __future__ import annotations

import base64
import io
import os
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, Proc, free_port, gateway_cmd, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("playground")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "S3_BUCKET", "API_KEYS")}
    env.update(DATA_DIR=str(tmp / "data"), API_KEYS="acme:key-acme", PYTHONUNBUFFERED="1", TORCH_THREADS="1")
    proc = Proc(gateway_cmd(port), tmp / "api.log", env=env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, what="gateway")
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def page(service):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(service + "/")
        page.get_by_test_id("api-key").fill("key-acme")
        page.get_by_test_id("api-key").dispatch_event("change")  # kept in localStorage, models reloaded with it
        yield page
        browser.close()


def test_generate_shows_the_image_and_a_preview(page, service):
    page.wait_for_function("document.querySelector('[data-testid=model]').options.length > 0")
    page.get_by_test_id("model").select_option("digits")
    page.get_by_test_id("prompt").fill("7")
    page.get_by_test_id("steps").fill("40")
    page.get_by_test_id("seed").fill("21")
    page.get_by_test_id("preview-every").fill("5")
    page.get_by_test_id("generate").click()
    image = page.get_by_test_id("result").locator("img").first
    image.wait_for(state="visible")
    page.wait_for_function("document.querySelector('[data-testid=result] img').naturalWidth > 0")
    # the image shown is the job's output: fetched again here and compared with what the browser decoded
    src = image.get_attribute("src")
    png = httpx.get(src).content
    shown = page.evaluate(
        """(img) => { const c = document.createElement('canvas'); c.width = img.naturalWidth;
            c.height = img.naturalHeight; c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL(); }""",
        image.element_handle(),
    )
    ours = np.asarray(Image.open(io.BytesIO(png)).convert("L")).astype(float)
    theirs = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown.split(",")[1]))).convert("L")).astype(float)
    assert ours.shape == (16, 16) and np.abs(ours - theirs).max() <= 1 and ours.std() > 5
    # a preview from the event stream was shown while it ran (the last one stays)
    preview = page.get_by_test_id("preview-image")
    assert preview.count() == 1 and preview.get_attribute("src").startswith("data:image/png;base64,")
    assert "succeeded" in page.get_by_test_id("status").inner_text()
    curl = page.get_by_test_id("curl").text_content()  # inside a closed <details>: the text, not what is shown
    assert curl.startswith("curl ") and "Bearer key-acme" in curl and '"prompt":"7"' in curl
    if os.environ.get("SAVE_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        page.screenshot(path=str(REPO / "docs" / "playground.png"), full_page=True)


def test_cancel_a_long_job(page):
    page.get_by_test_id("model").select_option("digits")
    page.get_by_test_id("prompt").fill("3")
    page.get_by_test_id("steps").fill("1000")
    page.get_by_test_id("scheduler").select_option("ddpm")
    page.get_by_test_id("preview-every").fill("0")
    page.locator("#num_images").fill("8")
    page.get_by_test_id("generate").click()
    page.wait_for_function("document.querySelector('[data-testid=progress]').value > 0")  # it runs
    page.get_by_test_id("cancel").click()
    page.wait_for_function("document.querySelector('[data-testid=status]').textContent.includes('canceled')")
    assert page.get_by_test_id("result").locator("img").count() == 0
    assert "canceled" in page.get_by_test_id("error").inner_text()


def test_controls_follow_the_task(page):
    """Image inputs show for the image tasks only; the mask brush for inpaint; frames for video."""
    page.get_by_test_id("model").select_option("digits")
    assert not page.locator("#image-inputs").is_visible() and not page.locator("#num_frames").is_visible()
    assert page.get_by_test_id("task").locator("option[value=img2img]").is_disabled()  # digits does txt2img only
