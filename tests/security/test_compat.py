"""The compatibility adapters attacked as a hostile tenant would: bodies that amplify into records, waits past the
cap, clients that go away or retry, headers that overflow, a tenant's own model named by ``version``.

One real uvicorn server (in a thread of this process, embedded mode) so that the tests reach the job store behind
it and measure what a request left there, not only what it echoed."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import threading

import httpx
import pytest
import uvicorn
from PIL import Image

from api.config import Settings
from core import tenant_models
from core.errors import QuotaExceeded
from serve import create_app
from tests.conftest import REPO, free_port, wait_for

WAITS = 2  # MAX_WAITS_PER_TENANT of this gateway
LONG = {"model": "digits", "prompt": "3", "scheduler": "ddpm", "num_inference_steps": 1000, "num_images": 8, "seed": 1}
A1111_LONG = dict(prompt="3", seed=1, width=16, height=16, steps=1000, batch_size=8, sampler_name="DDPM")
A1111_QUICK = dict(prompt="7", width=16, height=16, steps=2, cfg_scale=2.0, sampler_name="DDIM")
SMALL = 4096  # bytes: what one prediction's record and each read of it may weigh, however big the body was


def auth(tenant: str) -> dict:
    return {"Authorization": f"Bearer key-{tenant}"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """(base URL, the app's backends): a real server on a free port, its store within reach."""
    tenants = ["amp", "waits", "gone", "idem", "hdr", "own", "other"]
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("sec-compat"),
        api_keys=",".join(f"{t}:key-{t}" for t in tenants),
        rate_limit_per_minute=100_000,
        max_waits_per_tenant=WAITS,
        warm_models="",
        torch_threads=1,
    )
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: server.started and httpx.get(f"{url}/readyz").status_code == 200, 60, what="gateway")
    yield url, app.state.backends
    server.should_exit = True
    thread.join(30)


def jobs_of(url: str, tenant: str) -> list[dict]:
    r = httpx.get(f"{url}/v1/jobs", params={"limit": 100}, headers=auth(tenant))
    assert r.status_code == 200, r.text
    return r.json()["data"]


def record_bytes(b, job_id: str) -> int:
    """What the job store holds for one job, as it would serialise it."""
    return len(b.store.jobs.get(job_id).model_dump_json())


def cap_reached(b, tenant: str) -> bool:
    try:
        b.waiters.check(tenant)
    except QuotaExceeded:
        return True
    return False


def unknown_keys_body(head: str, n: int = 50_000, pad: int = 380) -> bytes:
    """A JSON object whose first members are ``head`` and then ``n`` unknown keys of ``pad`` characters (~20 MB)."""
    keys = ",".join(f'"k{i:05d}{"x" * pad}":"SECRET-VALUE-{i}"' for i in range(n))
    return f"{{{head},{keys}}}".encode()


# -- finding 4: inputs amplified into records -------------------------------------------------------------------------
def test_replicate_prediction_with_50000_unknown_inputs_leaves_a_record_of_a_few_kb(gw):
    url, b = gw
    head = '"version":"digits","input":{"prompt":"7","num_inference_steps":2,"seed":3'
    body = unknown_keys_body(head)[:-1] + b"}}"  # the unknown keys sit inside input
    assert 19_000_000 < len(body) < Settings().max_body_bytes == 25 * 1024 * 1024
    r = httpx.post(f"{url}/v1/predictions", content=body, timeout=120,
                   headers={**auth("amp"), "Content-Type": "application/json", "Prefer": "wait=60"})  # fmt: skip
    assert r.status_code == 201, r.text[:500]
    p = r.json()
    assert p["status"] == "succeeded" and len(p["output"]) == 1  # the known inputs ran
    assert len(r.content) < SMALL
    assert record_bytes(b, p["id"]) < SMALL
    stored = b.store.jobs.get(p["id"])
    assert "SECRET-VALUE" not in stored.model_dump_json()  # values of ignored inputs are never kept
    assert len(stored.via["ignored"]) == 32 and stored.via["ignored_more"] == 50_000 - 32
    assert all(len(n) <= 65 for n in stored.via["ignored"])
    # every read of it, and the list page that holds it, stay small too
    for path in (f"/v1/predictions/{p['id']}", f"/v1/jobs/{p['id']}", "/v1/predictions"):
        page = httpx.get(f"{url}{path}", headers=auth("amp"))
        assert page.status_code == 200 and len(page.content) < SMALL, (path, len(page.content))
    logs = httpx.get(f"{url}/v1/predictions/{p['id']}", headers=auth("amp")).json()["logs"]
    assert logs.splitlines()[0].endswith(f"and {50_000 - 32} more")


def test_replicate_input_names_cannot_forge_log_lines(gw):
    """An ignored name with a newline would add a line the client parses as progress; names are shown printable."""
    url, _ = gw
    evil = "x\n100%|██████████| 50/50"
    r = httpx.post(f"{url}/v1/predictions", json={"version": "digits", "input": {"prompt": "7", evil: 1,
                   "num_inference_steps": 2}}, headers={**auth("amp"), "Prefer": "wait=60"})  # fmt: skip
    assert r.status_code == 201, r.text
    logs = r.json()["logs"]
    assert "50/50" not in logs.splitlines()[-1] and len(logs.splitlines()) == 2  # ignored line, progress line


def test_a1111_call_with_50000_unknown_fields_answers_and_stores_a_few_kb(gw):
    url, b = gw
    head = ",".join(f'"{k}":{json.dumps(v)}' for k, v in {**A1111_QUICK, "seed": 5}.items())
    body = unknown_keys_body(head)
    r = httpx.post(f"{url}/sdapi/v1/txt2img", content=body, timeout=120,
                   headers={**auth("amp"), "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 200, r.text[:500]
    answer = r.json()
    assert len(answer["images"]) == 1
    assert len(r.content) - len(answer["images"][0]) < 2 * SMALL  # the image, and a few KB about it
    assert "SECRET-VALUE" not in r.text and not any(k.startswith("k0") for k in answer["parameters"])
    info = json.loads(answer["info"])
    assert len(info["ignored"]) == 32 and all(len(n) <= 65 for n in info["ignored"])
    assert f"{50_000 - 32} more ignored fields not listed" in info["notes"]
    for job_id in info["job_ids"]:
        assert record_bytes(b, job_id) < SMALL
    # the same bound where A1111's options are set
    many = {f"opt{i}": i for i in range(5000)}
    r = httpx.post(f"{url}/sdapi/v1/options", json=many, headers=auth("amp"))
    assert r.status_code == 200 and len(r.json()["ignored"]) == 32 and r.json()["ignored_more"] == 5000 - 32


def test_a_body_past_the_gateway_limit_is_refused_before_it_is_parsed(gw):
    url, _ = gw
    body = b'{"version":"digits","input":{"k":"' + b"x" * (26 * 1024 * 1024) + b'"}}'
    r = httpx.post(f"{url}/v1/predictions", content=body, timeout=120,
                   headers={**auth("amp"), "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 413


# -- finding 7: an A1111 call refused for waits, or abandoned by its client, leaves no job -----------------------------
def test_a1111_call_past_the_waits_cap_is_429_and_leaves_no_job(gw):
    url, b = gw
    r = httpx.post(f"{url}/v1/txt2img", json=LONG, headers=auth("waits"))
    assert r.status_code == 202, r.text
    long_id = r.json()["id"]
    polls = [
        threading.Thread(
            target=httpx.get,
            args=(f"{url}/v1/jobs/{long_id}?wait=60",),
            kwargs={"headers": auth("waits"), "timeout": 90},
        )  # fmt: skip
        for _ in range(WAITS)
    ]
    for t in polls:
        t.start()
    wait_for(lambda: cap_reached(b, "waits"), 30, what="the waits cap reached")  # the long-polls hold every slot
    try:
        for _ in range(3):  # a client that retries on 429
            r = httpx.post(f"{url}/sdapi/v1/txt2img", json={**A1111_QUICK, "n_iter": 2}, headers=auth("waits"))
            assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_waits", r.text
        # the same class on every route that submits then waits: v1's Prefer: wait, Replicate's
        quick = {"model": "digits", "prompt": "7", "num_inference_steps": 2}
        r = httpx.post(f"{url}/v1/txt2img", json=quick, headers={**auth("waits"), "Prefer": "wait=30"}, timeout=60)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_waits", r.text
        body = {"version": "digits", "input": {"prompt": "7", "num_inference_steps": 2}}
        r = httpx.post(f"{url}/v1/predictions", json=body, headers={**auth("waits"), "Prefer": "wait=30"}, timeout=60)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_waits", r.text
        assert [j["id"] for j in jobs_of(url, "waits")] == [long_id]  # nothing queued by the refused calls
    finally:
        httpx.post(f"{url}/v1/jobs/{long_id}/cancel", headers=auth("waits"))
        for t in polls:
            t.join(90)
    r = httpx.post(f"{url}/sdapi/v1/txt2img", json={**A1111_QUICK, "seed": 1}, headers=auth("waits"), timeout=120)
    assert r.status_code == 200 and len(r.json()["images"]) == 1  # the slots came back


def test_a1111_client_that_goes_away_leaves_no_job_running(gw):
    url, _ = gw
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(f"{url}/sdapi/v1/txt2img", json={**A1111_LONG, "n_iter": 2}, headers=auth("gone"), timeout=2)
    jobs = wait_for(
        lambda: (js := jobs_of(url, "gone")) and all(j["status"] in ("canceled", "succeeded", "failed") for j in js)
        and js, 30, what="the abandoned call's jobs to end",
    )  # fmt: skip
    assert len(jobs) == 2 and {j["status"] for j in jobs} == {"canceled"}, jobs


# -- finding 11: one Idempotency-Key per call -------------------------------------------------------------------------
def test_a1111_retry_with_the_same_idempotency_key_returns_the_same_jobs_and_images(gw):
    url, _ = gw
    headers = {**auth("idem"), "Idempotency-Key": "call-1"}
    call = {**A1111_QUICK, "n_iter": 2, "batch_size": 2, "seed": -1}  # a random seed: the retry must draw the same
    first = httpx.post(f"{url}/sdapi/v1/txt2img", json=call, headers=headers, timeout=120)
    again = httpx.post(f"{url}/sdapi/v1/txt2img", json=call, headers=headers, timeout=120)
    assert first.status_code == 200 and again.status_code == 200, (first.text, again.text)
    one, two = json.loads(first.json()["info"]), json.loads(again.json()["info"])
    assert len(first.json()["images"]) == 4 and first.json()["images"] == again.json()["images"]
    assert one["job_ids"] == two["job_ids"] and one["all_seeds"] == two["all_seeds"]
    assert sorted(j["id"] for j in jobs_of(url, "idem")) == sorted(one["job_ids"])  # two jobs, not four
    pixels = {hashlib.sha256(base64.b64decode(i)).hexdigest() for i in first.json()["images"]}
    assert len(pixels) == 4  # four seeds, four draws
    for other in ({**call, "prompt": "3"}, {**call, "n_iter": 1}, {**call, "n_iter": 3}):
        r = httpx.post(f"{url}/sdapi/v1/txt2img", json=other, headers=headers, timeout=120)
        assert r.status_code == 409 and r.json()["error"]["field"] == "Idempotency-Key", r.text
    assert len(jobs_of(url, "idem")) == 2


# -- finding 8: Cancel-After ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    ["1e400s", "1" + "0" * 400 + "s", "inf", "nan", "-5s", "0s", "0", "99999999h", "86401s", "5 minutes", ""],
)
def test_cancel_after_out_of_range_or_unparsable_is_422_naming_the_header(gw, value):
    url, _ = gw
    r = httpx.post(f"{url}/v1/predictions", json={"version": "digits", "input": {"prompt": "7"}},
                   headers={**auth("hdr"), "Cancel-After": value})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["field"] == "Cancel-After", r.text
    assert jobs_of(url, "hdr") == []


def test_cancel_after_past_the_familys_timeout_names_the_header(gw):
    url, _ = gw
    r = httpx.post(f"{url}/v1/predictions", json={"version": "digits", "input": {"prompt": "7"}},
                   headers={**auth("hdr"), "Cancel-After": "5h"})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["field"] == "Cancel-After", r.text
    assert jobs_of(url, "hdr") == []


# -- also: Replicate's version finds the tenant's own models ----------------------------------------------------------
def test_replicate_version_names_the_tenants_own_trained_model(gw, tmp_path):
    url, b = gw
    folder = tmp_path / "mine"
    shutil.copytree(REPO / "models" / "digits", folder)
    (folder / "README.md").write_text("own copy\n")  # its own version (sha256 of the files)
    record = tenant_models.publish(b.store.registrations, b.storage, "own", "model", "mine", folder, "job_0",
                                   tenant_models.read_configs(folder))  # fmt: skip
    versions = [record.version, record.version[:12], "mine", "acme/mine:" + record.version]
    for version in versions:
        r = httpx.post(f"{url}/v1/predictions", json={"version": version, "input": {"prompt": "7", "seed": 1,
                       "num_inference_steps": 2}}, headers={**auth("own"), "Prefer": "wait=60"})  # fmt: skip
        assert r.status_code == 201, (version, r.text)
        p = r.json()
        assert p["status"] == "succeeded" and p["version"] == record.version, p
        image = Image.open(io.BytesIO(httpx.get(p["output"][0]).content))
        assert image.size == (16, 16)
    r = httpx.post(f"{url}/v1/predictions", json={"model": "own/mine", "input": {"prompt": "7"}}, headers=auth("own"))
    assert r.status_code == 201, r.text
    # another tenant's model stays out of reach, by name and by version
    for version in ("mine", record.version):
        r = httpx.post(f"{url}/v1/predictions", json={"version": version, "input": {"prompt": "7"}},
                       headers=auth("other"))  # fmt: skip
        assert r.status_code == 422 and r.json()["error"]["field"] in ("version", "model"), r.text
    assert jobs_of(url, "other") == []
    # the model's page: private to its tenant, a 404 to any other (as an unknown name is)
    r = httpx.get(f"{url}/v1/models/own/mine", headers=auth("own"))
    assert r.status_code == 200 and r.json()["visibility"] == "private", r.text
    assert httpx.get(f"{url}/v1/models/acme/digits", headers=auth("own")).json()["visibility"] == "public"
    for who, path in (("other", "/v1/models/own/mine"), ("own", "/v1/models/own/nothing-here")):
        r = httpx.get(f"{url}{path}", headers=auth(who))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
