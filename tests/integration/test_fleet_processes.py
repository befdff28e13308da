"""The fleet with real processes: a worker given SIGTERM finishes the job it runs, takes no other, and exits (nothing
lost); two gateways on one Redis serve one job: submitted through one, long-polled, streamed and canceled through
the other, its webhook delivered once."""

from __future__ import annotations

import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import Proc, free_port, gateway_cmd, wait_for
from tests.integration.stack import A, Stack

pytestmark = [pytest.mark.integration]

LONGER = {"prompt": "3", "num_inference_steps": 300, "scheduler": "ddpm", "num_images": 4}
SHORT = {"prompt": "5", "num_inference_steps": 4}


def test_sigterm_finishes_the_running_job_takes_no_other_and_exits(redis_server, s3_server, tmp_path, logs_dir):
    db = redis_server.rsplit("/", 1)[0] + "/12"
    alive = tmp_path / "alive"
    env = {"BATCH_WINDOW_MS": "0", "ALIVE_FILE": str(alive), "ALIVE_EVERY_S": "0.5"}
    stack = Stack(db, s3_server, tmp_path, logs_dir, extra_env=env)
    try:
        worker = stack.start_worker("draining")
        running = stack.submit(LONGER)["id"]
        wait_for(lambda: stack.http.get(f"/v1/jobs/{running}", headers=A).json()["progress"]["step"] > 0, 60)
        # busy with its one job, the worker still tells its liveness probe it lives (the alive file keeps moving)
        seen = alive.stat().st_mtime
        wait_for(lambda: alive.stat().st_mtime > seen, 10, what="the alive file touched while the worker is busy")
        queued = [stack.submit(SHORT)["id"] for _ in range(3)]
        worker.kill(signal.SIGTERM)  # a scale-down: Celery's warm shutdown
        wait_for(lambda: not worker.alive(), 120, what="the worker exits after its job")
        done = stack.http.get(f"/v1/jobs/{running}", headers=A).json()
        assert done["status"] == "succeeded" and len(done["output"]) == 4  # finished, not abandoned
        assert all(stack.http.get(f"/v1/jobs/{i}", headers=A).json()["status"] == "queued" for i in queued)
        stack.start_worker("next")  # the queued ones wait for the next worker: nothing lost
        assert all(stack.wait(i)["status"] == "succeeded" for i in queued)
    finally:
        stack.stop()


class Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Receiver.bodies.append({"id": self.headers.get("webhook-id"), "body": json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_two_gateways_serve_one_job_and_deliver_its_webhook_once(redis_server, s3_server, tmp_path, logs_dir):
    db = redis_server.rsplit("/", 1)[0] + "/13"
    env = {
        "WEBHOOK_ALLOW_PRIVATE": "1",
        "SIGNING_KEY": "k" * 32,
        "WEBHOOK_SECRET": "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB",
    }
    stack = Stack(db, s3_server, tmp_path, logs_dir, extra_env=env)
    port = free_port()
    other = Proc(gateway_cmd(port), logs_dir / f"api-other-{port}.log", env=stack.env)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    try:
        second = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        wait_for(lambda: second.get("/readyz").status_code == 200, 30, what="second gateway")
        # 1. submitted through the first, with no worker yet: the second streams it and long-polls it
        job_id = stack.submit({**SHORT, "webhook": hook, "webhook_events_filter": ["start", "completed"]})["id"]
        events: list[str] = []

        def stream():
            with second.stream("GET", f"/v1/jobs/{job_id}/events", headers=A) as r:
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        events.append(line.removeprefix("event: "))

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        stack.start_worker("shared")
        polled = second.get(f"/v1/jobs/{job_id}?wait=60", headers=A).json()
        assert polled["status"] == "succeeded"
        t.join(30)
        assert "status" in events and not t.is_alive()
        # 2. the webhook: each event once, though both gateways run a deliverer
        wait_for(lambda: {b["body"]["type"] for b in Receiver.bodies} >= {"job.start", "job.completed"}, 30)
        ids = [b["id"] for b in Receiver.bodies if b["body"]["data"]["id"] == job_id]
        assert len(ids) == len(set(ids)) == 2
        # 3. canceled through the second gateway, a job the first one queued
        stack.workers[0].stop()
        queued = stack.submit(LONGER)["id"]
        assert second.post(f"/v1/jobs/{queued}/cancel", headers=A).status_code in (200, 202)
        assert stack.http.get(f"/v1/jobs/{queued}?wait=30", headers=A).json()["status"] == "canceled"
    finally:
        receiver.shutdown()
        other.stop()
        stack.stop()
