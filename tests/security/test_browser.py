"""Attacks through a browser (finding 9 and the browser-facing hardening of issue 19): a model folder named with
markup, framing and sniffing of the playground, DNS rebinding of a key-less local gateway, forged cross-site POSTs
that ride on the browser's HTTP Basic credentials, and a malformed WEBHOOK_SECRET that would weaken every tenant's
webhook key. Each test sends what the hostile party sends."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.config import Settings
from core.webhooks import new_secret
from serve import create_app
from tests.api.helpers import LONG_JOB
from tests.conftest import REPO, Proc, free_port, gateway_cmd, wait_for

KEY = "key-acme"
A = {"Authorization": f"Bearer {KEY}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(f"any-user:{KEY}".encode()).decode()}  # what A1111 clients send
XSS = "<img src=x onerror=alert(localStorage.getItem('diffuserve.apiKey'))>"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        api_keys=f"acme:{KEY}",
        rate_limit_per_minute=10_000,
        torch_threads=1,
        allowed_hosts=None,  # the default, whatever the environment says
    )
    with TestClient(create_app(settings)) as c:
        yield c


# -- finding 9: markup in a served name ------------------------------------------------------------------------------
def hostile_models_dir(root):
    """A MODELS_DIR where whoever can write a folder name tries to get markup into the playground: an engine model, a
    ControlNet and a LoRA named with HTML, beside a well-named copy of the digits model."""
    digits = REPO / "models" / "digits"
    for name in (XSS, "digits-alias"):
        (root / name).mkdir(parents=True)
        for f in ("config.json", "scheduler_config.json"):
            shutil.copy(digits / f, root / name / f)
    (root / "<b onmouseover=alert(1)>cn").mkdir()
    (root / "<b onmouseover=alert(1)>cn" / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    (root / "cn-ok").mkdir()
    (root / "cn-ok" / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    (root / "loras").mkdir()
    (root / "loras" / "<svg onload=alert(1)>.safetensors").write_bytes(b"")
    (root / "loras" / "ink.safetensors").write_bytes(b"")
    return root


def test_a_model_folder_named_with_html_is_never_served(tmp_path, caplog):
    settings = Settings(data_dir=tmp_path / "data", models_dir=hostile_models_dir(tmp_path / "models"), warm_models="")
    with caplog.at_level(logging.WARNING, logger="diffuserve.registry"), TestClient(create_app(settings)) as c:
        ids = [m["id"] for m in c.get("/v1/models").json()]
        assert "digits-alias" in ids and "cn-ok" in ids and "digits" in ids  # the folder was read
        assert not [i for i in ids if "<" in i or ">" in i], ids
        assert [m["name"] for m in c.get("/sdapi/v1/loras").json()] == ["ink"]
        assert c.get("/controlnet/model_list").json()["model_list"] == ["cn-ok"]
        r = c.post("/v1/txt2img", json={"model": XSS, "prompt": "1"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "model"
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert XSS in skipped and "onmouseover" in skipped and "<svg onload" in skipped  # the operator is told


def test_a_models_config_key_with_html_is_never_served(tmp_path):
    from core.registry import ModelRegistry

    cfg = tmp_path / "models.json"
    spec = {"hub_id": "runwayml/stable-diffusion-v1-5", "pipeline": "StableDiffusionPipeline"}
    cfg.write_text(json.dumps({"models": {XSS: spec, "sd15": spec}, "controlnets": {XSS: {"hub_id": "x/y"}}}))
    registry = ModelRegistry([], cfg)
    assert [e.id for e in registry.list()] == ["sd15"] and registry.controlnet_names() == []


# -- framing, sniffing, script injection: the playground's headers ---------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/static/playground.js", "/static/playground.css", "/static/index.html"])
def test_the_playground_cannot_be_framed_or_run_injected_script(client, path):
    r = client.get(path)
    assert r.status_code == 200
    csp = {d.split()[0]: d.split()[1:] for d in r.headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'self'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert set(csp["img-src"]) == {"'self'", "data:", "blob:"}  # local disk serves the outputs: no other origin
    assert not [v for vs in csp.values() for v in vs if "unsafe" in v or v in ("*", "https:", "http:")]
    assert "script-src" not in csp and "style-src" not in csp  # default-src 'self': no inline script or style
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_the_playground_has_no_inline_script_handler_or_style():
    html = (REPO / "api" / "static" / "index.html").read_text()
    js = (REPO / "api" / "static" / "playground.js").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [] and "<style" not in html
    assert not re.findall(r"\s(on[a-z]+|style)\s*=", html), "inline handlers and styles are blocked by the CSP"
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "javascript:"):
        assert sink not in js


def test_every_answer_is_nosniff(client):
    for r in (client.get("/v1/models", headers=A), client.get("/v1/models"), client.get("/healthz")):
        assert r.headers["x-content-type-options"] == "nosniff"
    job = client.post("/v1/txt2img", json={"prompt": "4", "num_inference_steps": 1}, headers=A).json()
    url = client.get(f"/v1/jobs/{job['id']}?wait=60", headers=A).json()["output"][0]["url"]
    r = client.get(url)  # an output a tenant made: never sniffed into HTML
    assert r.headers["content-type"] == "image/png" and r.headers["x-content-type-options"] == "nosniff"


def test_outputs_on_another_origin_are_allowed_as_images_only(tmp_path, s3_server):
    """With S3 the playground shows presigned URLs of the bucket's public endpoint: that origin, and only it."""
    settings = Settings(
        data_dir=tmp_path,
        s3_bucket=s3_server["bucket"],
        s3_endpoint_url=s3_server["endpoint"],
        s3_public_endpoint_url="http://s3.example:9000",
        warm_models="",
    )
    with TestClient(create_app(settings)) as c:
        csp = {d.split()[0]: d.split()[1:] for d in c.get("/").headers["content-security-policy"].split("; ")}
    assert "http://s3.example:9000" in csp["img-src"] and "http://s3.example:9000" in csp["media-src"]
    assert csp["default-src"] == ["'self'"] and "connect-src" not in csp


# -- DNS rebinding ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/v1/models", "/healthz", "/static/playground.js"])
def test_a_rebound_host_name_is_refused(client, path):
    """evil.example resolves to the gateway's address after the page loaded: the browser still sends its name."""
    r = client.get(path, headers={**A, "Host": "evil.example"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host" and r.json()["error"]["field"] == "Host"
    assert r.headers["x-request-id"] and r.headers["x-content-type-options"] == "nosniff"
    r = client.post("/v1/txt2img", json={"prompt": "1"}, headers={**A, "Host": "evil.example:8000"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"


def test_allowed_hosts_default_and_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("HOST", raising=False)
    monkeypatch.delenv("ALLOWED_HOSTS", raising=False)
    assert Settings().allowed_host_names() == ["127.0.0.1", "[::1]", "localhost"]
    assert "0.0.0.0" in Settings(host="0.0.0.0").allowed_host_names()
    assert Settings(allowed_hosts="*").allowed_host_names() is None
    with pytest.raises(ValidationError, match="ALLOWED_HOSTS"):
        Settings(allowed_hosts="https://api.example.com/")
    settings = Settings(data_dir=tmp_path, allowed_hosts="api.example.com,*.corp.example", warm_models="")
    with TestClient(create_app(settings)) as c:
        for host, status in [
            ("api.example.com", 200),
            ("API.example.com.:443", 200),
            ("gpu.corp.example", 200),
            ("corp.example.evil.example", 400),
            ("localhost", 400),  # the list replaces the default
            ("testserver", 200),  # the address the connection arrived on (here the test client's)
        ]:
            assert c.get("/healthz", headers={"Host": host}).status_code == status, host


def test_a_rebound_name_is_refused_by_the_running_gateway(tmp_path):
    """A real uvicorn on 127.0.0.1, as `make run` starts it: the names of the machine pass, a rebound one does not."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "S3_BUCKET", "API_KEYS", "ALLOWED_HOSTS")}
    env.update(DATA_DIR=str(tmp_path / "data"), WARM_MODELS="", HOST="127.0.0.1", PYTHONUNBUFFERED="1")
    proc = Proc(gateway_cmd(port), tmp_path / "api.log", env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, 30, what=f"gateway: {proc.tail()}")
        assert httpx.get(f"http://localhost:{port}/healthz").status_code == 200
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"):
            r = httpx.post(f"{url}/v1/txt2img", json={"prompt": "1"}, headers={"Host": host})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", host
        assert httpx.get(f"{url}/v1/jobs").json()["data"] == []  # nothing was submitted
    finally:
        proc.stop()


# -- forged cross-site POSTs -----------------------------------------------------------------------------------------
FORGED = [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port of localhost, a sibling subdomain
    {"Origin": "https://evil.example"},
    {"Origin": "null"},  # a sandboxed frame, a data: page
    {"Origin": "http://testserver.evil.example"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"},
]


def test_a_forged_cancel_is_refused_and_the_job_runs_on(client):
    """A page on evil.example posts to /v1/jobs/{id}/cancel: no body, so no CORS preflight; the browser adds the
    Basic credentials it holds. Refused, and the job keeps running; the same POST from a client that is not a
    browser (no Sec-Fetch-Site, no Origin) still cancels it."""
    job = client.post("/v1/txt2img", json=LONG_JOB, headers=A).json()
    wait_for(lambda: client.get(f"/v1/jobs/{job['id']}", headers=A).json()["progress"]["step"] > 0, 60, what="runs")
    for forged in FORGED:
        r = client.post(f"/v1/jobs/{job['id']}/cancel", headers={**BASIC, **forged})
        assert r.status_code == 403, (forged, r.text)
        assert r.json()["error"]["code"] == "cross_site_request", forged
    record = client.app.state.backends.store.jobs.get(job["id"])
    assert not record.cancel_requested and record.status == "running"
    step = client.get(f"/v1/jobs/{job['id']}", headers=A).json()["progress"]["step"]
    wait_for(lambda: client.get(f"/v1/jobs/{job['id']}", headers=A).json()["progress"]["step"] > step, 60, what="on")
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=BASIC)
    assert r.status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}?wait=60", headers=A).json()["status"] == "canceled"


@pytest.mark.parametrize("path", ["/sdapi/v1/interrupt", "/sdapi/v1/skip"])
def test_a_forged_a1111_interrupt_is_refused(client, path):
    for forged in FORGED:
        assert client.post(path, headers={**BASIC, **forged}).status_code == 403, forged
    assert client.post(path, headers=BASIC).status_code == 200


def test_the_playground_own_requests_pass(client):
    """What the browser sends for the playground's own fetch: same-origin, its Origin the gateway's."""
    for own in (
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
        {"Origin": "http://testserver"},  # plain http to a LAN address: no Sec-Fetch-Site, Origin decides
        {"Origin": "http://testserver:80"},
        {"Sec-Fetch-Site": "none"},  # typed by the user
    ):
        r = client.post("/v1/txt2img", json={"prompt": "1", "num_inference_steps": 1}, headers={**A, **own})
        assert r.status_code == 202, (own, r.text)
    assert client.get("/v1/models", headers={**A, "Sec-Fetch-Site": "cross-site"}).status_code == 200  # reads pass


# -- a malformed WEBHOOK_SECRET --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "secret",
    [
        "whsec_",  # an empty key: every tenant's key derived from nothing
        "whsec_c2hvcnQ=",  # 5 bytes
        "changeme",  # no prefix: base64 of garbage, silently decoded before
        "whsec_not base64 at all!!",
        "whsec_" + "A" * 33,  # not a length base64 can have
        "whsec_" + base64.b64encode(b"\0" * 32).decode() + "#",
    ],
)
def test_a_malformed_webhook_secret_refuses_to_start(secret, monkeypatch, tmp_path):
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    with pytest.raises(ValidationError) as e:
        create_app()
    assert "WEBHOOK_SECRET" in str(e.value) and (len(secret) < 8 or secret not in str(e.value))  # never echoed


def test_a_well_formed_webhook_secret_starts():
    for secret in (new_secret(), new_secret().rstrip("="), "whsec_" + base64.b64encode(os.urandom(24)).decode(), ""):
        Settings(webhook_secret=secret)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_pages_cannot_be_framed_and_load_pinned_scripts(path, tmp_path):
    """They share the playground's origin and its stored API key: a page elsewhere must not frame them."""
    with TestClient(create_app(Settings(data_dir=tmp_path, warm_models=""))) as c:
        r = c.get(path)
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
    scripts = [u for u in r.text.split('"') if u.startswith("https://cdn.jsdelivr.net/")]
    assert scripts and all("@5.35.0/" in u or "@2.5.2/" in u for u in scripts), scripts
