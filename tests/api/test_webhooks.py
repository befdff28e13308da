"""Webhooks: Standard Webhooks signatures (verified here with the ``standardwebhooks`` package), retries under the
same webhook-id, attempts on the job, deliveries that outlive their deliverer, and the SSRF rules."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from standardwebhooks import Webhook, WebhookVerificationError

from api.config import Settings
from core import webhooks
from core.errors import InputError
from core.jobs.store import memory_store
from serve import create_app
from tests.conftest import wait_for

A = {"Authorization": "Bearer key-acme"}
B = {"Authorization": "Bearer key-globex"}


class Receiver:
    """A webhook receiver on a free loopback port: answers the first deliveries of each event type with the statuses
    ``fail`` names for it (then 200), and keeps what it got."""

    def __init__(self, fail: dict[str, list[int]] | None = None):
        self.fail = {k: list(v) for k, v in (fail or {}).items()}
        self.got: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["content-length"]))
                queued = receiver.fail.get(json.loads(body)["type"], [])
                status = queued.pop(0) if queued else 200
                receiver.got.append({"at": time.time(), "headers": dict(self.headers), "body": body, "status": status})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/diffuserve?source=test"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        api_keys="acme:key-acme,globex:key-globex",
        rate_limit_per_minute=10_000,
        torch_threads=1,
        webhook_allow_private=True,  # the receiver is on loopback
        webhook_backoff_s=0.5,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_completed_webhook_is_signed_retried_under_the_same_id_and_recorded(client):
    receiver = Receiver(fail={"job.completed": [500]})  # the first delivery of the completed event fails
    try:
        body = {
            "prompt": "6",
            "num_inference_steps": 4,
            "seed": 3,
            "webhook": receiver.url,
            "webhook_events_filter": ["start", "completed"],
        }
        job = client.post("/v1/txt2img", json=body, headers=A).json()
        wait_for(lambda: sum(g["status"] == 200 for g in receiver.got) == 2, 30, what="start and completed delivered")
        secret = client.get("/v1/webhooks/secret", headers=A).json()["key"]
        assert secret.startswith("whsec_")
        payloads = [Webhook(secret).verify(g["body"], g["headers"]) for g in receiver.got]  # raises if forged
        types = [p["type"] for p in payloads]
        assert types == ["job.start", "job.completed", "job.completed"], types
        start, failed, retried = receiver.got
        assert failed["status"] == 500 and retried["status"] == 200
        assert failed["headers"]["webhook-id"] == retried["headers"]["webhook-id"] != start["headers"]["webhook-id"]
        assert retried["at"] - failed["at"] >= 0.4  # backoff, not a hot loop
        assert failed["body"] == retried["body"]  # the same message, re-signed at each attempt
        done = payloads[2]["data"]
        assert done["id"] == job["id"] and done["status"] == "succeeded" and payloads[0]["data"]["status"] == "running"
        png = client.get(done["output"][0]["url"]).content  # the receiver can fetch the output
        assert np.asarray(Image.open(io.BytesIO(png))).std() > 5
        assert receiver.got[0]["headers"]["host"] == receiver.url.split("/")[2]  # the host the URL names
        # every attempt is on the job
        attempts = client.get(f"/v1/jobs/{job['id']}", headers=A).json()["webhooks"]
        completed = [a for a in attempts if a["type"] == "job.completed"]
        assert [(a["attempt"], a["status_code"]) for a in completed] == [(1, 500), (2, 200)]
        assert completed[0]["next_attempt_at"] and completed[1]["next_attempt_at"] is None
        print("\nwebhook delivery timeline (s after the first delivery):")
        for g, p in zip(receiver.got, payloads, strict=True):
            print(f"  +{g['at'] - receiver.got[0]['at']:.3f} {p['type']} {g['headers']['webhook-id']} -> {g['status']}")
    finally:
        receiver.close()


def test_each_tenant_signs_with_its_own_key(client):
    acme = client.get("/v1/webhooks/secret", headers=A).json()["key"]
    globex = client.get("/v1/webhooks/secret", headers=B).json()["key"]
    assert acme != globex
    body = json.dumps({"type": "job.completed", "data": {"id": "job_x"}})
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(globex).sign("msg_1", now, body),
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(acme).verify(body, headers)  # globex's key cannot sign for acme's receiver
    assert Webhook(globex).verify(body, headers)["data"]["id"] == "job_x"


@pytest.mark.parametrize(
    "url, allow_private, refused",
    [
        ("http://169.254.169.254/latest/meta-data/", True, True),  # cloud metadata: always refused
        ("http://[fd00:ec2::254]/", True, True),
        ("http://[fe80::1]/", True, True),
        ("http://127.0.0.1:9/", False, True),  # loopback: only with WEBHOOK_ALLOW_PRIVATE
        ("http://127.0.0.1:9/", True, False),
        ("http://10.1.2.3/", False, True),
        ("http://192.168.0.10/", True, False),
        ("http://[::ffff:169.254.169.254]/", True, True),  # the metadata address written as IPv6
        ("http://localhost:8080/", False, True),  # resolved: loopback
        ("http://0.0.0.0/", True, True),
        ("http://no-such-host.invalid/", True, True),  # does not resolve
        ("ftp://example.com/", True, True),
        ("http://user:pw@127.0.0.1/", True, True),
    ],
)
def test_ssrf_rules(url, allow_private, refused):
    if refused:
        with pytest.raises(InputError) as e:
            webhooks.check_target(url, allow_private)
        assert e.value.field == "webhook"
    else:
        webhooks.check_target(url, allow_private)


def test_a_refused_webhook_is_a_422_naming_the_field_and_no_job(client):
    before = len(client.get("/v1/jobs", headers=A).json()["data"])
    for url in ("http://169.254.169.254/latest/meta-data/", "ftp://example.com/x"):
        r = client.post("/v1/txt2img", json={"prompt": "1", "webhook": url}, headers=A)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] in ("webhook", "body.webhook")
    r = client.post("/v1/txt2img", json={"prompt": "1", "webhook_events_filter": ["finished"]}, headers=A)
    assert r.status_code == 422
    assert len(client.get("/v1/jobs", headers=A).json()["data"]) == before


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        yield memory_store()
    else:
        from core.jobs.redis_store import redis_store

        s = redis_store(request.getfixturevalue("redis_server"))
        yield s
        s.close()


def test_a_delivery_claimed_by_a_deliverer_that_dies_comes_back_after_its_lease(store):
    """Deliveries live in the store (Redis in distributed mode): a gateway that dies holding one only delays it."""
    t0 = time.time()
    store.webhooks.add({"id": "msg_a", "job_id": "job_a", "attempts": 0}, t0)
    store.webhooks.add({"id": "msg_b", "job_id": "job_b", "attempts": 0}, t0 + 100)  # not due yet
    claimed = store.webhooks.claim_due(t0 + 1, 30, 10)
    assert [d["id"] for d in claimed] == ["msg_a"]
    assert store.webhooks.claim_due(t0 + 2, 30, 10) == []  # leased to the first deliverer, which then dies
    again = store.webhooks.claim_due(t0 + 32, 30, 10)  # past the lease: another deliverer gets it
    assert [d["id"] for d in again] == ["msg_a"]
    store.webhooks.reschedule({**again[0], "attempts": 1, "address": "203.0.113.7"}, t0 + 40)
    retried = store.webhooks.claim_due(t0 + 41, 30, 10)
    assert retried[0]["attempts"] == 1 and retried[0]["address"] == "203.0.113.7"  # the pinned address is kept
    store.webhooks.done("msg_a")
    assert [d["id"] for d in store.webhooks.claim_due(t0 + 1000, 30, 10)] == ["msg_b"]
