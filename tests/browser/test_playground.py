"""The web playground in a real browser: Debian's chromium driven by Playwright (``executable_path``; ``playwright
install`` cannot download browsers here). Load ``/``, pick ``digits``, type a prompt, generate, see the image and a
preview; start a long job and cancel it. All of it under the page's Content-Security-Policy, with no violation
logged; and whatever markup the server's data holds is shown as text."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, Proc, free_port, gateway_cmd, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


XSS = "<img src=x onerror=window.pwned=1>"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("playground")
    # whoever may write a folder name into MODELS_DIR names a model with markup: the registry never serves it
    hostile = tmp / "models" / XSS
    hostile.mkdir(parents=True)
    for f in ("config.json", "scheduler_config.json"):
        shutil.copy(REPO / "models" / "digits" / f, hostile / f)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "S3_BUCKET", "API_KEYS", "ALLOWED_HOSTS")}
    env.update(
        DATA_DIR=str(tmp / "data"),
        MODELS_DIR=str(tmp / "models"),
        API_KEYS="acme:key-acme",
        PYTHONUNBUFFERED="1",
        TORCH_THREADS="1",
    )
    proc = Proc(gateway_cmd(port), tmp / "api.log", env=env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, what="gateway")
    yield url
    proc.stop()


# every Content-Security-Policy violation the page sees, as the page's own event records it
RECORD_CSP = """window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def console():
    """What the browser logged on the page (console messages and uncaught errors), for the CSP checks."""
    return []


@pytest.fixture(scope="module")
def page(browser, service, console):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.add_init_script(RECORD_CSP)
    page.set_default_timeout(30_000)
    response = page.goto(service + "/")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]  # the page runs under the CSP
    page.get_by_test_id("api-key").fill("key-acme")
    page.get_by_test_id("api-key").dispatch_event("change")  # kept in localStorage, models reloaded with it
    yield page
    page.close()


def assert_no_csp_violation(page, console):
    logged = [m for m in console if "Content Security Policy" in m or m.startswith("pageerror")]
    assert logged == [] and page.evaluate("window.__csp") == [], (logged, page.evaluate("window.__csp"))


def test_generate_shows_the_image_and_a_preview(page, service, console):
    page.wait_for_function("() => document.querySelector('[data-testid=model]').options.length > 0")
    ids = page.eval_on_selector_all("[data-testid=model] option", "os => os.map((o) => o.value)")
    assert "digits" in ids and not [i for i in ids if "<" in i]  # the folder named with markup is not served
    page.get_by_test_id("model").select_option("digits")
    page.get_by_test_id("prompt").fill("7")
    page.get_by_test_id("steps").fill("40")
    page.get_by_test_id("seed").fill("21")
    page.get_by_test_id("preview-every").fill("5")
    page.get_by_test_id("generate").click()
    image = page.get_by_test_id("result").locator("img").first
    image.wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('[data-testid=result] img').naturalWidth > 0")
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
    assert_no_csp_violation(page, console)  # the image, the data: preview, the stream: all allowed by the policy
    if os.environ.get("SAVE_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        page.screenshot(path=str(REPO / "docs" / "playground.png"), full_page=True)


def test_size_inputs_follow_the_models_size_rule(page, console):
    """mnist draws multiples of 4 up to 112: the size boxes take its native 28 and 56 (a step of 8 refused both),
    refuse 30, and a job at 56 answers a 56x56 image."""
    page.wait_for_function("() => document.querySelector('[data-testid=model]').options.length > 1")
    page.get_by_test_id("model").select_option("mnist")
    valid = lambda v: page.locator("#width").evaluate(f"(e) => {{ e.value = '{v}'; return e.checkValidity(); }}")  # noqa: E731
    assert valid(28) and valid(56) and not valid(30) and not valid(116)
    page.get_by_test_id("prompt").fill("seven")
    page.locator("#width").fill("56")
    page.get_by_test_id("steps").fill("2")
    page.get_by_test_id("generate").click()
    page.wait_for_function("() => document.querySelector('[data-testid=status]').textContent.includes('succeeded')")
    page.wait_for_function("() => document.querySelector('[data-testid=result] img')?.naturalWidth === 56")
    assert page.locator("[data-testid=result] img").first.evaluate("(i) => i.naturalHeight") == 56  # square model
    assert_no_csp_violation(page, console)


def test_a_step_cache_from_the_models_list(page, console):
    """The cache select offers what the model takes (mnist: deep, with its default interval); a job drawn with it
    records what the cache reused."""
    page.wait_for_function("() => document.querySelector('[data-testid=model]').options.length > 1")
    page.get_by_test_id("model").select_option("mnist")
    offered = page.eval_on_selector_all("[data-testid=cache] option", "os => os.map((o) => o.value)")
    assert offered == ["", "deep"]
    page.get_by_test_id("cache").select_option("deep")
    page.get_by_test_id("prompt").fill("4")
    page.get_by_test_id("generate").click()
    # this job's record (the page may still show an earlier job's "succeeded" while this one is posted)
    page.wait_for_function(
        "() => { const t = document.querySelector('[data-testid=job-json]').textContent;"
        " return t.includes('step_cache') && t.includes('\"succeeded\"'); }"
    )
    job = json.loads(page.get_by_test_id("job-json").text_content())
    assert job["status"] == "succeeded" and job["input"]["cache"]["method"] == "deep"
    assert "reused" in job["versions"]["step_cache"]
    assert_no_csp_violation(page, console)


def test_cancel_a_long_job(page):
    page.get_by_test_id("model").select_option("digits")
    page.get_by_test_id("prompt").fill("3")
    page.get_by_test_id("steps").fill("1000")
    page.get_by_test_id("scheduler").select_option("ddpm")
    page.get_by_test_id("preview-every").fill("0")
    page.locator("#num_images").fill("8")
    page.get_by_test_id("generate").click()
    page.wait_for_function("() => document.querySelector('[data-testid=progress]').value > 0")  # it runs
    page.get_by_test_id("cancel").click()
    page.wait_for_function("() => document.querySelector('[data-testid=status]').textContent.includes('canceled')")
    # the stream tells the status first; the job read after it fills the error line
    page.wait_for_function("() => document.querySelector('[data-testid=error]').textContent.includes('canceled')")
    assert page.get_by_test_id("result").locator("img").count() == 0


def test_controls_follow_the_task(page, console):
    """Image inputs show for the image tasks only; the mask brush for inpaint; frames for video."""
    page.get_by_test_id("model").select_option("digits")
    assert not page.locator("#image-inputs").is_visible() and not page.locator("#num_frames").is_visible()
    assert page.get_by_test_id("task").locator("option[value=img2img]").is_disabled()  # digits does txt2img only
    assert_no_csp_violation(page, console)


def test_schedulers_follow_the_model_and_task(browser, service):
    """A flow model's image-to-image runs the flow Euler scheduler only: picking img2img offers just that, and
    txt2img offers its full list again (GET /v1/models' schedulers_by_task)."""
    page = browser.new_page()
    page.set_default_timeout(30_000)
    flow = {
        "id": "flow-model",
        "kind": "diffusers",
        "tasks": ["txt2img", "img2img"],
        "schedulers": ["default", "euler", "unipc"],
        "schedulers_by_task": {"txt2img": ["default", "euler", "unipc"], "img2img": ["default", "euler"]},
        "default_scheduler": "default",
    }
    page.route("**/v1/models", lambda r: r.fulfill(json=[flow]))
    page.goto(service + "/")
    page.wait_for_function("() => document.querySelector('[data-testid=model]').options.length > 0")
    values = lambda: page.eval_on_selector_all("[data-testid=scheduler] option", "os => os.map((o) => o.value)")  # noqa: E731
    assert values() == ["", "euler", "unipc"]
    page.get_by_test_id("scheduler").select_option("unipc")
    page.get_by_test_id("task").select_option("img2img")
    assert values() == ["", "euler"] and page.get_by_test_id("scheduler").input_value() == ""
    page.get_by_test_id("scheduler").select_option("euler")
    page.get_by_test_id("task").select_option("txt2img")
    assert values() == ["", "euler", "unipc"] and page.get_by_test_id("scheduler").input_value() == "euler"
    page.close()


def png_data_uri() -> str:
    buf = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_markup_in_the_servers_data_is_shown_as_text(browser, service):
    """A server (an older one, or one impersonated) answers with markup in every field the page shows: model,
    ControlNet and scheduler names, labels, a preview, an output's caption, an error message. The page is served
    here without its CSP, so only the page's own code stands between the markup and the API key in localStorage."""
    page = browser.new_page()
    page.set_default_timeout(30_000)

    def without_csp(route):
        r = route.fetch()
        headers = {k: v for k, v in r.headers.items() if k != "content-security-policy"}
        route.fulfill(response=r, headers=headers)

    model = {
        "id": XSS,
        "kind": "engine-ddpm",
        "tasks": ["txt2img"],
        "labels": [XSS],
        "schedulers": [XSS.replace("1", "2")],
        "default_scheduler": XSS.replace("1", "3"),
    }
    controlnet = {"id": XSS.replace("1", "4"), "kind": "controlnet", "tasks": ["controlnet"]}
    job = {"id": "job_" + "0" * 32, "status": "queued"}
    preview = {"image": 'x" onerror="window.pwned=5', "step": 1, "total": 2}  # breaks out of an attribute
    status = {"status": "succeeded"}
    events = f"event: preview\ndata: {json.dumps(preview)}\n\nevent: status\ndata: {json.dumps(status)}\n\n"
    done = {**job, "status": "succeeded", "output": [{"url": png_data_uri(), "content_type": "image/png", "role": XSS}]}
    page.route(service + "/", without_csp)
    page.route("**/v1/models", lambda r: r.fulfill(json=[model, controlnet]))
    page.route("**/v1/txt2img", lambda r: r.fulfill(status=202, json=job))
    page.route(f"**/v1/jobs/{job['id']}/events", lambda r: r.fulfill(body=events, content_type="text/event-stream"))
    page.route(f"**/v1/jobs/{job['id']}", lambda r: r.fulfill(json=done))
    response = page.goto(service + "/")
    assert "content-security-policy" not in response.headers
    page.wait_for_function("() => document.querySelector('[data-testid=model]').options.length > 0")
    texts = lambda sel: page.eval_on_selector_all(sel, "os => os.map((o) => o.textContent)")  # noqa: E731
    assert texts("[data-testid=model] option") == [f"{XSS} (engine-ddpm)"]
    assert texts("[data-testid=controlnet] option") == [controlnet["id"]]
    assert texts("[data-testid=scheduler] option") == [
        f"default ({model['default_scheduler']})",
        model["schedulers"][0],
    ]
    assert XSS in page.get_by_test_id("prompt").get_attribute("placeholder")
    page.get_by_test_id("prompt").fill("1")
    page.get_by_test_id("generate").click()
    page.wait_for_function("() => document.querySelector('[data-testid=status]').textContent.includes('succeeded')")
    assert page.locator("[data-testid=result] figcaption").text_content() == XSS
    assert page.locator("[data-testid=result] img").count() == 1  # the output, and no element made of its caption
    page.unroute("**/v1/txt2img")
    page.route(
        "**/v1/txt2img",
        lambda r: r.fulfill(status=422, json={"error": {"code": "invalid", "message": XSS, "field": XSS}}),
    )
    page.get_by_test_id("generate").click()
    page.wait_for_function("() => document.querySelector('[data-testid=error]').textContent.includes('invalid')")
    assert XSS in page.get_by_test_id("error").text_content()
    assert page.locator("[data-testid=error] *").count() == 0
    page.wait_for_timeout(300)  # an onerror would have run by now
    assert page.evaluate("window.pwned") is None and page.locator("img[src=x]").count() == 0
    page.close()
