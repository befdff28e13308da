"""The gateway in embedded mode (in-process queue, local disk), driven through HTTP with TestClient."""

import io
import json
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.config import Settings
from core.jobs.records import records
from serve import create_app
from tests.api.helpers import LONG_JOB, bomb_png, data_uri, png_bytes
from tests.conftest import wait_for

KEYS = "acme:key-acme,globex:key-globex"
A = {"Authorization": "Bearer key-acme"}
B = {"Authorization": "Bearer key-globex"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        api_keys=KEYS,
        rate_limit_per_minute=10_000,
        max_body_bytes=256 * 1024,
        max_upload_bytes=128 * 1024,
        max_image_pixels=1024 * 1024,
        torch_threads=1,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def run_job(client, body, headers=A, path="/v1/txt2img"):
    r = client.post(path, json=body, headers=headers)
    assert r.status_code == 202, r.text
    job = client.get(f"/v1/jobs/{r.json()['id']}?wait=60", headers=headers).json()
    assert job["status"] == "succeeded", job
    return job


def test_txt2img_end_to_end(client):
    r = client.post(
        "/v1/txt2img", json={"prompt": "seven", "num_inference_steps": 2, "num_images": 2, "seed": 5}, headers=A
    )
    assert r.status_code == 202
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    job = client.get(r.headers["location"] + "?wait=60", headers=A).json()
    assert job["status"] == "succeeded"
    assert job["input"]["prompt"] == "7" and job["input"]["scheduler"] == "ddim" and job["input"]["width"] == 16
    assert [o["seed"] for o in job["output"]] == [5, 6]
    assert job["model"]["id"] == "digits" and len(job["model"]["sha256"]) == 64
    assert {"torch", "diffuserve"} <= set(job["versions"])
    assert job["metrics"]["inference_ms"] > 0 and job["metrics"]["queue_ms"] >= 0
    png = client.get(job["output"][0]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (16, 16)


def test_digits_expected_slice(client):
    """A regression pin of the bundled engine model: a few pixel values of a '7' at a fixed seed."""
    import numpy as np

    job = run_job(client, {"prompt": "7", "num_inference_steps": 10, "seed": 3})
    got = np.asarray(Image.open(io.BytesIO(client.get(job["output"][0]["url"]).content)).convert("RGB")).astype(int)
    expected = np.array([[139, 139, 254], [139, 139, 254], [252, 252, 225]])  # 2x2 blocks: nearest-upsampled data
    assert np.abs(got[6:9, 6:9, 0] - expected).max() <= 2, got[6:9, 6:9, 0].tolist()


def test_seed_reproduces_and_image_i_is_seed_plus_i(client):
    a = run_job(client, {"prompt": "2", "num_inference_steps": 3, "num_images": 2, "seed": 40})
    b = run_job(client, {"prompt": "2", "num_inference_steps": 3, "num_images": 1, "seed": 41})
    second = client.get(a["output"][1]["url"]).content
    alone = client.get(b["output"][0]["url"]).content
    assert second == alone
    c = run_job(client, {"prompt": "2", "num_inference_steps": 3, "num_images": 1, "seed": 40})
    assert client.get(c["output"][0]["url"]).content == client.get(a["output"][0]["url"]).content


def test_random_seed_is_recorded(client):
    job = run_job(client, {"prompt": "1", "num_inference_steps": 1})
    assert isinstance(job["input"]["seed"], int) and job["output"][0]["seed"] == job["input"]["seed"]


def test_idempotency_key(client):
    body = {"prompt": "4", "num_inference_steps": 1, "seed": 3}
    h = {**A, "Idempotency-Key": "abc-123"}
    r1 = client.post("/v1/txt2img", json=body, headers=h)
    r2 = client.post("/v1/txt2img", json=body, headers=h)
    assert r1.status_code == r2.status_code == 202
    assert r1.json()["id"] == r2.json()["id"] and r2.headers.get("idempotent-replayed") == "true"
    r3 = client.post("/v1/txt2img", json={**body, "seed": 4}, headers=h)
    assert r3.status_code == 409 and r3.json()["error"]["field"] == "Idempotency-Key"
    # the same key of another tenant is another job
    r4 = client.post("/v1/txt2img", json=body, headers={**B, "Idempotency-Key": "abc-123"})
    assert r4.json()["id"] != r1.json()["id"]


def test_cancel_queued_and_running(client):
    running = client.post("/v1/txt2img", json=LONG_JOB, headers=A).json()
    queued = client.post("/v1/txt2img", json=LONG_JOB, headers=A).json()
    wait_for(
        lambda: client.get(f"/v1/jobs/{running['id']}", headers=A).json()["progress"]["step"] > 0,
        60,
        what="first job running",
    )
    r = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=A)
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    r = client.post(f"/v1/jobs/{running['id']}/cancel", headers=A)
    assert r.status_code == 200
    done = client.get(f"/v1/jobs/{running['id']}?wait=60", headers=A).json()
    assert done["status"] == "canceled" and done["progress"]["step"] < 1000
    q = client.get(f"/v1/jobs/{queued['id']}", headers=A).json()
    assert q["status"] == "canceled" and q["started_at"] is None  # never started
    # canceling a terminal job changes nothing
    assert client.post(f"/v1/jobs/{queued['id']}/cancel", headers=A).json()["status"] == "canceled"


def test_tenant_isolation(client):
    job = client.post("/v1/txt2img", json={"prompt": "5", "num_inference_steps": 1}, headers=A).json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=B).status_code == 404
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=B).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/events", headers=B).status_code == 404
    ids_b = [j["id"] for j in client.get("/v1/jobs?limit=100", headers=B).json()["data"]]
    assert job["id"] not in ids_b
    assert client.get(f"/v1/jobs/{job['id']}", headers=A).status_code == 200


def test_auth_required_on_v1_only(client):
    assert client.get("/v1/models").status_code == 401
    r = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_list_newest_first_paginated(client):
    ids = [
        client.post("/v1/txt2img", json={"prompt": "6", "num_inference_steps": 1}, headers=B).json()["id"]
        for _ in range(3)
    ]
    page = client.get("/v1/jobs?limit=2", headers=B).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["next_offset"] == 2
    page2 = client.get("/v1/jobs?limit=2&offset=2", headers=B).json()
    assert page2["data"][0]["id"] == ids[0]


def test_sse_replays_from_start_for_late_subscriber(client):
    job = run_job(client, {"prompt": "8", "num_inference_steps": 4})
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=A) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [blk for blk in text.split("\n\n") if blk.startswith("id:")]
    kinds = [e.split("\n")[1].removeprefix("event: ") for e in events]
    datas = [json.loads(e.split("\n")[2].removeprefix("data: ")) for e in events]
    assert kinds[0] == "status" and datas[0]["status"] == "queued"
    assert [d["step"] for k, d in zip(kinds, datas, strict=True) if k == "progress"] == [1, 2, 3, 4]
    assert datas[-1]["status"] == "succeeded"
    # resume after an event id
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers={**A, "Last-Event-ID": "2"}) as r:
        resumed = [b for b in "".join(r.iter_text()).split("\n\n") if b.startswith("id:")]
    assert resumed[0].startswith("id: 3") and len(resumed) == len(events) - 3


def test_long_poll_returns_when_done(client):
    r = client.post("/v1/txt2img", json={"prompt": "0", "num_inference_steps": 5}, headers=A).json()
    t0 = time.monotonic()
    job = client.get(f"/v1/jobs/{r['id']}?wait=30", headers=A).json()
    assert job["status"] == "succeeded" and time.monotonic() - t0 < 30
    # wait=0 answers at once with the current state
    assert client.get(f"/v1/jobs/{r['id']}?wait=0", headers=A).json()["status"] == "succeeded"


def test_signed_urls_refuse_tampering_and_expiry(client):
    job = run_job(client, {"prompt": "9", "num_inference_steps": 1})
    url = job["output"][0]["url"]
    assert client.get(url).status_code == 200
    assert client.get(url.replace("sig=", "sig=0")).status_code == 403
    assert client.get(url.replace("/0.png", "/job.json")).status_code == 403  # the signature names the key
    key = url.split("/files/")[1].split("?")[0]
    storage = client.app.state.backends.storage
    expired = int(time.time()) - 1
    r = client.get(f"/files/{key}?expires={expired}&sig={storage.signature(key, expired)}")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    # the job's record is written beside its outputs
    assert records.flush()  # written on the worker's record-writer thread
    record = json.loads(storage.get(f"jobs/{job['id']}/job.json"))
    assert record["status"] == "succeeded" and record["input"]["seed"] == job["input"]["seed"]


def test_models_schedulers_metrics(client):
    models = client.get("/v1/models", headers=A).json()
    digits = next(m for m in models if m["id"] == "digits")
    assert digits["tasks"] == ["txt2img"] and digits["labels"] == [str(i) for i in range(10)]
    assert (digits["width"], digits["height"]) == (16, 16)
    assert "ddim" in client.get("/v1/schedulers", headers=A).json()
    run_job(client, {"prompt": "1", "num_inference_steps": 1})
    text = client.get("/metrics").text
    assert 'diffuserve_jobs_finished_total{status="succeeded",type="txt2img"}' in text
    assert "diffuserve_queue_depth" in text and "diffuserve_job_run_seconds_bucket" in text
    assert "diffuserve_job_wait_seconds_count" in text and "diffuserve_model_load_seconds" in text


def test_upload_image_and_use_it(client):
    r = client.post("/v1/uploads", files={"file": ("x.png", png_bytes(16, 16), "image/png")}, headers=A)
    assert r.status_code == 201 and r.json()["width"] == 16
    upl = r.json()["id"]
    # digits cannot do img2img: a clear 4xx naming the model, after the image itself was accepted
    r = client.post("/v1/img2img", json={"image": upl, "prompt": "1"}, headers=A)
    assert r.status_code == 422 and r.json()["error"] == {
        "code": "unsupported_task",
        "field": "model",
        "message": r.json()["error"]["message"],
    }
    # another tenant cannot use it
    r = client.post("/v1/img2img", json={"image": upl, "prompt": "1"}, headers=B)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_upload"


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/img2img", {"image": "IMG", "prompt": "1"}),
        ("/v1/inpaint", {"image": "IMG", "mask_image": "IMG", "prompt": "1"}),
        ("/v1/controlnet", {"controlnet": "canny", "control_image": "IMG", "prompt": "1"}),
        ("/v1/video", {"prompt": "a cat"}),
        ("/v1/trainings/lora", {"base_model": "digits", "name": "style", "dataset": "upl_" + "0" * 32}),
    ],
)
def test_tasks_without_executor_answer_unsupported_task(client, path, body):
    img = data_uri(png_bytes())
    body = {k: (img if v == "IMG" else v) for k, v in body.items()}
    r = client.post(path, json=body, headers=A)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "unsupported_task"


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00"
    b"\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

BAD_INPUTS = [
    # (method, path, kwargs, status, field)
    ("post", "/v1/txt2img", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, None),
    ("post", "/v1/txt2img", {"json": {"prompt": 7}}, 422, "prompt"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "num_images": 9}}, 422, "num_images"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "num_images": "many"}}, 422, "num_images"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "seed": -1}}, 422, "seed"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "num_inference_steps": 0}}, 422, "num_inference_steps"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "guidance_scale": 1e9}}, 422, "guidance_scale"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "width": 17}}, 422, "width"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "width": 16, "height": 32}}, 422, "height"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "scheduler": "heun"}}, 422, "scheduler"),
    ("post", "/v1/txt2img", {"json": {"prompt": "eleven"}}, 422, "prompt"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "model": "nope"}}, 422, "model"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "model": "../etc"}}, 422, "model"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "bogus": 1}}, 422, "bogus"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "loras": [{"name": "../../x"}]}}, 422, "loras.0.name"),
    ("post", "/v1/txt2img", {"json": ["a", "list"]}, 422, None),
    ("post", "/v1/img2img", {"json": {"prompt": "1", "image": "http://169.254.169.254/latest"}}, 422, "image"),
    ("post", "/v1/img2img", {"json": {"prompt": "1", "image": "file:///etc/passwd"}}, 422, "image"),
    ("post", "/v1/img2img", {"json": {"prompt": "1", "image": "data:image/png;base64,%%%"}}, 422, "image"),
    ("post", "/v1/img2img", {"json": {"prompt": "1", "image": data_uri(b"not an image")}}, 422, "image"),
    ("post", "/v1/img2img", {"json": {"prompt": "1", "image": data_uri(bomb_png())}}, 413, "image"),
    ("post", "/v1/img2img", {"json": {"prompt": "1", "image": "upl_" + "f" * 32}}, 422, "image"),
    ("post", "/v1/img2img", {"json": {"prompt": "1", "image": data_uri(png_bytes()), "strength": 2}}, 422, "strength"),
    (
        "post",
        "/v1/txt2img",
        {"content": b"{" + b" " * (300 * 1024) + b"}", "headers": {"content-type": "application/json"}},
        413,
        "body",
    ),
    ("post", "/v1/uploads", {"files": {"file": ("x.bin", b"\x00" * 100, "application/octet-stream")}}, 422, "file"),
    ("post", "/v1/uploads", {"files": {"file": ("b.png", bomb_png(), "image/png")}}, 413, "file"),
    (
        "post",
        "/v1/uploads",
        {"files": {"file": ("big.png", b"\x89PNG" + b"\x00" * (200 * 1024), "image/png")}},
        413,
        None,
    ),
    ("post", "/v1/uploads", {"data": {"nofile": "1"}}, 422, "file"),
    ("get", "/v1/jobs/job_doesnotexist", {}, 404, "id"),
    ("get", "/v1/jobs/" + "x" * 500, {}, 404, "id"),
    ("post", "/v1/jobs/job_doesnotexist/cancel", {}, 404, "id"),
    ("get", "/v1/jobs/job_doesnotexist/events", {}, 404, "id"),
    ("get", "/v1/jobs?limit=0", {}, 422, "limit"),
    ("get", "/v1/jobs?limit=abc", {}, 422, "limit"),
    ("get", "/v1/jobs/x?wait=-1", {}, 422, "wait"),
    ("get", "/v1/nowhere", {}, 404, None),
    ("delete", "/v1/txt2img", {}, 405, None),
    ("get", "/files/jobs/x/0.png", {}, 422, "expires"),
    ("get", "/files/jobs/x/0.png?expires=1&sig=abc", {}, 403, "sig"),
    ("get", "/files/jobs/x/0.png?expires=99999999999&sig=%C3%A9%E2%82%AC", {}, 403, "sig"),  # non-ASCII sig
    ("get", "/v1/jobs/x?wait=61", {}, 422, "wait"),
    ("post", "/v1/uploads", {"files": {"file": ("x.eps", EPS, "application/postscript")}}, 422, "file"),
    ("post", "/v1/uploads", {"files": {"file": ("x.gif", GIF, "image/gif")}}, 422, "file"),
    ("post", "/v1/img2img", {"json": {"prompt": "1", "image": data_uri(EPS, "image/png")}}, 422, "image"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "timeout_s": 100_000}}, 422, "timeout_s"),
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "timeout_s": 3600}}, 422, "timeout_s"),  # over the engine's cap
    ("post", "/v1/txt2img", {"json": {"prompt": "1", "width": 512, "height": 512}}, 422, "width"),
    (
        "post",
        "/v1/trainings/lora",
        {"json": {"base_model": "digits", "name": "x", "dataset": "upl_" + "0" * 32, "max_train_steps": 100_000}},
        422,
        "max_train_steps",
    ),
    (
        "post",
        "/v1/trainings/lora",
        {"json": {"base_model": "digits", "name": "x", "dataset": "upl_" + "0" * 32, "resolution": 2048}},
        422,
        "resolution",
    ),
    (
        "post",
        "/v1/trainings/lora",
        {"json": {"base_model": "digits", "name": "x", "dataset": "upl_" + "0" * 32, "train_batch_size": 64}},
        422,
        "train_batch_size",
    ),
    (
        "post",
        "/v1/trainings/ddpm",
        {"json": {"name": "x", "max_train_steps": 200_000, "train_batch_size": 512, "resolution": 256}},
        422,
        "max_train_steps",
    ),
]


@pytest.mark.parametrize(
    "method,path,kwargs,status,field", BAD_INPUTS, ids=[f"{m} {p[:40]} {s}" for m, p, _, s, _ in BAD_INPUTS]
)
def test_bad_input_battery(client, method, path, kwargs, status, field):
    headers = {**A, **kwargs.pop("headers", {})} if path.startswith("/v1") else kwargs.pop("headers", {})
    r = getattr(client, method)(path, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "field"} and err["message"]
    if field is not None:
        assert err["field"] == field


def test_rate_limit_answers_429_with_retry_after(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys="t:k", rate_limit_per_minute=2, warm_models="")
    with TestClient(create_app(settings)) as c:
        h = {"Authorization": "Bearer k"}
        codes = [
            c.post("/v1/txt2img", json={"prompt": "1", "num_inference_steps": 1}, headers=h).status_code
            for _ in range(3)
        ]
        assert codes[:2] == [202, 202] and codes[2] == 429
        r = c.post("/v1/txt2img", json={"prompt": "1"}, headers=h)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert r.json()["error"]["code"] == "rate_limited"
        assert c.get("/v1/models", headers=h).status_code == 200  # reads are not limited
