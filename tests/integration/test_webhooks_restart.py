"""A webhook delivery outlives the gateway that held it: it waits in Redis, and another gateway delivers it under
the same webhook-id after the first was SIGKILLed between two attempts."""

from __future__ import annotations

import httpx
import pytest
from standardwebhooks import Webhook

from tests.api.test_webhooks import Receiver
from tests.conftest import Proc, free_port, gateway_cmd, wait_for
from tests.integration.stack import A, Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_delivery_survives_a_gateway_killed_between_attempts(redis_server, tmp_path, logs_dir):
    receiver = Receiver(fail={"job.completed": [503]})
    env = {"WEBHOOK_ALLOW_PRIVATE": "1", "WEBHOOK_BACKOFF_S": "3"}
    stack = Stack(redis_server, None, tmp_path, logs_dir, extra_env=env)
    other = None
    try:
        stack.start_worker("hooks")
        job = stack.submit({"prompt": "2", "num_inference_steps": 4, "seed": 8, "webhook": receiver.url})
        assert stack.wait(job["id"])["status"] == "succeeded"
        # the first attempt failed (503) and is recorded, the next due 3 s later; the gateway dies before it
        wait_for(
            lambda: (
                [a["status_code"] for a in stack.http.get(f"/v1/jobs/{job['id']}", headers=A).json()["webhooks"]]
                == [503]
            ),
            30,
            what="the first attempt, recorded",
        )
        stack.api.p.kill()
        stack.api.p.wait(10)
        assert len(receiver.got) == 1
        # another gateway on the same Redis (and DATA_DIR: the same webhook secret) takes the delivery over
        port = free_port()
        other = Proc(gateway_cmd(port), logs_dir / f"api-{port}.log", env=stack.env)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, what="the second gateway")
        wait_for(lambda: len(receiver.got) == 2, 60, what="the retry, from the second gateway")
        first, retried = receiver.got
        assert first["status"] == 503 and retried["status"] == 200
        assert first["headers"]["webhook-id"] == retried["headers"]["webhook-id"]
        secret = httpx.get(f"{url}/v1/webhooks/secret", headers=A).json()["key"]
        payload = Webhook(secret).verify(retried["body"], retried["headers"])
        assert payload["type"] == "job.completed" and payload["data"]["id"] == job["id"]
        attempts = httpx.get(f"{url}/v1/jobs/{job['id']}", headers=A).json()["webhooks"]
        assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 503), (2, 200)]
    finally:
        receiver.close()
        if other:
            other.stop()
        stack.stop()
