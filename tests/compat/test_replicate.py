"""Replicate's own Python client (``replicate``, from PyPI) against the gateway, unchanged: ``base_url`` and the API
key are all that differ. A prediction is the job it wraps: the same id reads through ``/v1/jobs`` too."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ReplicateError
from replicate.webhook import Webhooks, WebhookSigningSecret

from tests.compat.conftest import KEY_A, KEY_B
from tests.conftest import wait_for

A = {"Authorization": f"Bearer {KEY_A}"}
LONG = {"prompt": "3", "scheduler": "ddpm", "num_inference_steps": 1000, "num_outputs": 8, "seed": 1}


def client(gateway: str, key: str = KEY_A, seen: list | None = None) -> replicate.Client:
    hooks = {"request": [lambda req: seen.append((req.method, req.url.path, req.headers.get("prefer")))]}
    return replicate.Client(api_token=key, base_url=gateway, **({"event_hooks": hooks} if seen is not None else {}))


def image(url: str) -> np.ndarray:
    r = httpx.get(url)
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(r.content))).astype(np.int16)


def test_run_answers_in_one_request_with_prefer_wait_and_the_urls_of_the_images(gateway):
    seen: list = []
    c = client(gateway, seen=seen)
    out = c.run("acme/digits", input={"prompt": "7", "num_outputs": 2, "num_inference_steps": 10, "seed": 42,
                                      "scheduler": "DDIM", "guidance_scale": 2.0})  # fmt: skip
    assert seen == [("POST", "/v1/models/acme/digits/predictions", "wait")]  # finished within the wait: no polling
    assert len(out) == 2
    images = [image(u) for u in out]
    assert images[0].shape == (16, 16) and images[0].std() > 20 and np.abs(images[0] - images[1]).mean() > 2
    body = {"model": "digits", "prompt": "7", "seed": 42, "num_inference_steps": 10, "guidance_scale": 2.0,
            "scheduler": "ddim", "num_images": 2}  # fmt: skip
    r = httpx.post(f"{gateway}/v1/txt2img", json=body, headers={**A, "Prefer": "wait=60"}, timeout=90)
    assert np.array_equal(images[0], image(r.json()["output"][0]["url"]))  # the native route draws the same


def test_create_wait_progress_list_and_the_job_behind_it(gateway):
    c = client(gateway)
    p = c.predictions.create(model="acme/digits", input={"prompt": "4", "num_inference_steps": 12, "seed": 3,
                                                          "not_an_input": 1})  # fmt: skip
    assert p.status in ("starting", "processing", "succeeded") and p.urls["get"].endswith(f"/v1/predictions/{p.id}")
    p.wait()
    assert p.status == "succeeded" and p.model == "acme/digits" and len(p.output) == 1
    assert (p.progress.current, p.progress.total) == (12, 12)  # the client parses our logs' progress bar
    assert "ignored inputs: not_an_input" in p.logs and p.metrics["predict_time"] > 0
    assert p.created_at and p.started_at and p.completed_at
    job = httpx.get(f"{gateway}/v1/jobs/{p.id}", headers=A).json()
    assert job["status"] == "succeeded" and job["input"]["seed"] == 3 and job["input"]["num_inference_steps"] == 12
    assert p.id in [x.id for x in c.predictions.list().results]
    assert p.id not in [x.id for x in client(gateway, KEY_B).predictions.list().results]  # tenants stay apart
    with pytest.raises(ReplicateError) as e:
        client(gateway, KEY_B).predictions.get(p.id)
    assert e.value.status == 404
    v = c.predictions.create(version="digits", input={"prompt": "5", "num_inference_steps": 4})  # by version
    v.wait()
    assert v.status == "succeeded" and v.model == "diffuserve/digits"


def test_list_pages_with_next(gateway):
    c = client(gateway, KEY_B)
    body = {"prompt": "1", "num_inference_steps": 1}
    for _ in range(101):  # one more than a page
        r = httpx.post(f"{gateway}/v1/txt2img", json=body, headers={"Authorization": f"Bearer {KEY_B}"})
        assert r.status_code == 202
    first = c.predictions.list()
    assert len(first.results) == 100 and first.next
    second = c.predictions.list(first.next)
    assert len(second.results) >= 1 and not {x.id for x in second.results} & {x.id for x in first.results}


def test_cancel_a_running_prediction(gateway):
    c = client(gateway)
    p = c.predictions.create(model="acme/digits", input=LONG)
    wait_for(lambda: (p.reload(), p.status == "processing")[1], 60, what="processing")
    p.cancel()
    wait_for(lambda: (p.reload(), p.status == "canceled")[1], 60, what="canceled")
    assert p.output is None and httpx.get(f"{gateway}/v1/jobs/{p.id}", headers=A).json()["status"] == "canceled"


def test_cancel_after_cancels_a_prediction_that_runs_past_it(gateway):
    r = httpx.post(f"{gateway}/v1/models/acme/digits/predictions", json={"input": LONG},
                   headers={**A, "Cancel-After": "1s"})  # fmt: skip
    assert r.status_code == 201, r.text
    p = client(gateway).predictions.get(r.json()["id"])
    p.wait()
    assert p.status == "canceled" and p.input["timeout_s"] == 1 and "deadline_exceeded" in p.error
    bad = httpx.post(f"{gateway}/v1/predictions", json={"version": "digits"}, headers={**A, "Cancel-After": "soon"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "Cancel-After"


class Receiver:
    def __init__(self):
        self.got: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.got.append({"headers": dict(self.headers), "body": body.decode()})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_webhook_delivers_the_prediction_signed_as_replicate_signs(gateway):
    receiver = Receiver()
    c = client(gateway)
    p = c.predictions.create(model="acme/digits", input={"prompt": "2", "num_inference_steps": 6, "seed": 9},
                             webhook=receiver.url, webhook_events_filter=["start", "completed"])  # fmt: skip
    wait_for(lambda: len(receiver.got) >= 2, 60, what="start and completed deliveries")
    receiver.server.shutdown()
    bodies = [json.loads(g["body"]) for g in receiver.got]
    assert [b["status"] for b in bodies] == ["processing", "succeeded"]
    done = bodies[1]
    assert done["id"] == p.id and done["model"] == "acme/digits" and len(done["output"]) == 1
    assert image(done["output"][0]).shape == (16, 16)
    secret = c.webhooks.default.secret()  # GET /v1/webhooks/default/secret, Replicate's path
    Webhooks.validate(headers=receiver.got[1]["headers"], body=receiver.got[1]["body"], secret=secret)  # raises if bad
    forged = WebhookSigningSecret(key=client(gateway, KEY_B).webhooks.default.secret().key)
    with pytest.raises(Exception):  # noqa: B017 - another tenant's key does not verify it
        Webhooks.validate(headers=receiver.got[1]["headers"], body=receiver.got[1]["body"], secret=forged)


def test_errors_come_back_as_replicate_errors_naming_the_input(gateway):
    c = client(gateway)
    with pytest.raises(ReplicateError) as e:
        c.run("acme/no-such-model", input={"prompt": "1"})
    assert e.value.status == 422 and "no-such-model" in e.value.detail
    with pytest.raises(ReplicateError) as e:
        c.predictions.create(model="acme/digits", input={"prompt": "1", "num_outputs": 99})
    assert e.value.status == 422 and e.value.detail.startswith("input.num_outputs")
    with pytest.raises(ReplicateError) as e:
        c.predictions.create(model="acme/digits", input={"prompt": "1", "image": "https://example.com/x.png"})
    assert e.value.status == 422 and "not fetched" in e.value.detail  # URLs are never fetched
    with pytest.raises(ReplicateError) as e:
        client(gateway, "wrong").predictions.list()
    assert e.value.status == 401


def test_stream_sends_output_and_done(gateway):
    c = client(gateway)
    p = c.predictions.create(model="acme/digits", input={"prompt": "8", "num_inference_steps": 30})
    t0 = time.monotonic()
    with httpx.stream("GET", p.urls["stream"], headers=A, timeout=60) as r:
        text = "".join(r.iter_text())
    events = [block.split("\n")[0] for block in text.strip().split("\n\n") if block.startswith("event:")]
    assert events[-2:] == ["event: output", "event: done"] and "event: logs" in events
    assert time.monotonic() - t0 < 60


def test_the_clients_model_and_version_reads_parse(gateway):
    """``models.get`` and ``models.versions.get`` as the client parses them: its Version model requires a
    ``created_at`` date and a ``cog_version`` string."""
    model = client(gateway).models.get("acme/digits")
    version = model.latest_version
    assert model.name == "digits" and version.created_at.year >= 2024 and version.cog_version.startswith("diffuserve")
    assert model.versions.get(version.id).id == version.id
