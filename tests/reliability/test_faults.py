"""Faults against real processes (uvicorn, Celery workers, redis-server with AOF, moto_server), each with the
outcome the service promises: nothing accepted is lost, every failure is a clear JSON answer."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import wait_for
from tests.integration.stack import A, B, Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TERMINAL = ("succeeded", "failed", "canceled")


def _statuses(stack: Stack, job_id: str) -> list[str]:
    text = stack.http.get(f"/v1/jobs/{job_id}/events", headers=A, timeout=30).text
    return [
        line.split('"status": "')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("data:") and '"status": "' in line
    ]


def test_redis_killed_and_restarted_from_aof(aof_redis, moto, tmp_path, logs_dir):
    """Jobs queued, Redis SIGKILLed: every /v1 route answers 503 JSON with Retry-After at once; /healthz stays 200,
    /readyz names the store. Redis restarts from its AOF, a worker starts: every job ends succeeded."""
    stack = Stack(aof_redis.url, moto.info, tmp_path, logs_dir)
    try:
        jobs = [stack.submit({"prompt": str(i), "num_inference_steps": 4, "seed": i})["id"] for i in range(5)]
        # frozen (a dead socket, not a refused one): answers within the store's 2-second socket timeout, then fast
        os.killpg(aof_redis.proc.pid, signal.SIGSTOP)
        try:
            for path in ("/v1/jobs", f"/v1/jobs/{jobs[0]}", "/v1/models"):
                t0 = time.monotonic()
                r = stack.http.get(path, headers=A)
                assert r.status_code == 503 and time.monotonic() - t0 < 3.5, (path, r.status_code)
            t0 = time.monotonic()
            assert stack.http.get("/readyz").json()["failing"][:1] == ["store"] and time.monotonic() - t0 < 4.5
        finally:
            os.killpg(aof_redis.proc.pid, signal.SIGCONT)
        aof_redis.kill()
        calls = [
            ("POST", "/v1/txt2img", {"prompt": "1"}),
            ("GET", "/v1/jobs", None),
            ("GET", f"/v1/jobs/{jobs[0]}", None),
            ("GET", "/v1/models", None),
            ("GET", f"/v1/jobs/{jobs[0]}?wait=5", None),
            ("POST", f"/v1/jobs/{jobs[0]}/cancel", None),
        ]
        for method, path, body in calls:
            t0 = time.monotonic()
            r = stack.http.request(method, path, json=body, headers=A)
            took = time.monotonic() - t0
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json" and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] in ("store_unavailable", "unavailable") and took < 4, (path, took)
            assert "127.0.0.1" not in r.text and "Traceback" not in r.text
        assert stack.http.get("/healthz").status_code == 200
        ready = stack.http.get("/readyz")
        assert ready.status_code == 503 and "store" in ready.json()["failing"]
        aof_redis.start()  # the same port and folder: it replays the AOF
        wait_for(lambda: stack.http.get("/readyz").status_code == 200, 30, what="gateway ready again")
        stack.start_worker("after-outage")
        for job_id in jobs:
            job = stack.wait(job_id)
            assert job["status"] == "succeeded" and len(job["output"]) == 1, job
    finally:
        stack.stop()


def test_worker_frozen_past_its_lease(redis_server, moto, tmp_path, logs_dir):
    """Worker A is SIGSTOPped mid-job past its lease; the reaper hands the job to worker B. When A wakes it writes
    nothing (no cancel, no failure, no second finish): the job succeeds once, with one set of outputs."""
    stack = Stack(redis_server, moto.info, tmp_path, logs_dir)
    try:
        a = stack.start_worker("a")
        job_id = stack.submit(
            {"prompt": "3", "scheduler": "ddpm", "num_inference_steps": 1000, "num_images": 2, "seed": 1}
        )["id"]
        wait_for(
            lambda: stack.http.get(f"/v1/jobs/{job_id}", headers=A).json()["progress"]["step"] >= 20,
            60,
            what="worker a mid-job",
        )
        os.killpg(a.pid, signal.SIGSTOP)
        b = stack.start_worker("b")
        wait_for(
            lambda: (
                (j := stack.http.get(f"/v1/jobs/{job_id}", headers=A).json())["attempts"] == 2
                and j["status"] == "running"
            ),
            60,
            what="worker b runs the job",
        )
        os.killpg(a.pid, signal.SIGCONT)
        wait_for(lambda: b"writes nothing" in a.log.read_bytes(), 60, what=f"worker a stops: {a.tail()}")
        job = stack.wait(job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 2 and job["error"] is None, job
        statuses = _statuses(stack, job_id)
        assert statuses.count("succeeded") == 1 and "canceled" not in statuses and "failed" not in statuses, statuses
        # one set of outputs, and the record, written just after the job turns succeeded
        wait_for(
            lambda: (
                sorted(k.rsplit("/", 1)[1] for k in moto.keys(f"{tmp_path.name}/jobs/{job_id}/"))
                == ["0.png", "1.png", "job.json"]
            ),
            30,
            what="one set of outputs and the record",
        )
        assert a.alive() and b.alive()
    finally:
        stack.stop()


def test_s3_paused_then_gone(redis_server, moto, tmp_path, logs_dir):
    """S3 paused 8 s: the job waits it out and succeeds. S3 gone: the job fails storage_unavailable (no endpoint in
    the message, no outputs listed), uploads answer 503 JSON, /readyz names storage. A worker started without -Q
    also runs training jobs."""
    stack = Stack(redis_server, moto.info, tmp_path, logs_dir, extra_env={"STORAGE_RETRY_S": "12"})
    try:
        stack.start_worker("s3")
        trained = stack.submit(
            {"name": "tiny-digits", "max_train_steps": 3, "train_batch_size": 8}, path="/v1/trainings/ddpm"
        )
        assert stack.wait(trained["id"])["status"] == "succeeded"  # the training queue is consumed by default

        moto.pause()
        resume = threading.Timer(8, moto.resume)
        resume.start()
        t0 = time.monotonic()
        job = stack.wait(stack.submit({"prompt": "5", "num_inference_steps": 4, "seed": 3})["id"])
        assert job["status"] == "succeeded" and time.monotonic() - t0 >= 7.5, job
        resume.join()

        moto.kill()
        job = stack.wait(stack.submit({"prompt": "6", "num_inference_steps": 4, "num_images": 2, "seed": 3})["id"])
        assert job["status"] == "failed" and job["error"]["code"] == "storage_unavailable", job
        assert job["output"] == [] and "127.0.0.1" not in job["error"]["message"]
        assert str(moto.port) not in job["error"]["message"]
        up = stack.http.post("/v1/uploads", files={"file": ("x.png", b"\x89PNG\r\n\x1a\n" + b"0" * 64)}, headers=A)
        assert up.status_code in (422, 503)  # not an image: 422 before storage is touched
        from tests.api.helpers import png_bytes

        up = stack.http.post("/v1/uploads", files={"file": ("x.png", png_bytes())}, headers=A)
        assert (
            up.status_code == 503 and up.json()["error"]["code"] == "storage_unavailable" and up.headers["retry-after"]
        )
        ready = stack.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["failing"] == ["storage"]
    finally:
        stack.stop()


def test_one_job_per_idempotency_key_under_30_concurrent_posts(redis_server, tmp_path, logs_dir):
    tenant = f"idem{time.time_ns()}"  # a tenant of its own on the shared Redis
    stack = Stack(redis_server, None, tmp_path, logs_dir, api_keys=f"{tenant}:key-idem")
    h = {"Authorization": "Bearer key-idem"}
    try:
        body = {"prompt": "2", "num_inference_steps": 2, "seed": 9}

        def post(_):
            with httpx.Client(base_url=stack.url, timeout=30) as c:
                return c.post("/v1/txt2img", json=body, headers={**h, "Idempotency-Key": "one-key"})

        with ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(post, range(30)))
        assert {r.status_code for r in answers} == {202}
        assert len({r.json()["id"] for r in answers}) == 1
        assert len(stack.http.get("/v1/jobs?limit=100", headers=h).json()["data"]) == 1
    finally:
        stack.stop()


def test_150_long_polls_do_not_stall_another_tenant(redis_server, tmp_path, logs_dir):
    """Tenant A opens 150 long-polls on a queued job: 100 wait (the per-tenant cap), 50 get 429 JSON at once; tenant
    B's /v1/models stays fast; a cancel wakes every waiting poll."""
    stack = Stack(redis_server, None, tmp_path, logs_dir)
    try:
        job_id = stack.submit({"prompt": "1", "num_inference_steps": 2})["id"]  # no worker: it stays queued
        other: list[float] = []

        async def scenario():
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
            async with httpx.AsyncClient(base_url=stack.url, timeout=60, limits=limits) as c:
                polls = [asyncio.create_task(c.get(f"/v1/jobs/{job_id}?wait=30", headers=A)) for _ in range(150)]
                await asyncio.sleep(0)  # let them start before measuring the other tenant
                for _ in range(20):
                    t0 = time.monotonic()
                    r = await c.get("/v1/models", headers=B)
                    other.append(time.monotonic() - t0)
                    assert r.status_code == 200
                rejected = await asyncio.gather(*[p for p in polls if p.done()])
                t0 = time.monotonic()
                await c.post(f"/v1/jobs/{job_id}/cancel", headers=A)
                answers = await asyncio.gather(*polls)
                return answers, time.monotonic() - t0, len(rejected)

        answers, woke_in, _ = asyncio.run(scenario())
        codes = [r.status_code for r in answers]
        assert codes.count(200) == 100 and codes.count(429) == 50, sorted(set(codes))
        assert all(r.json()["status"] == "canceled" for r in answers if r.status_code == 200)
        assert all(r.json()["error"]["code"] == "too_many_waits" for r in answers if r.status_code == 429)
        assert woke_in < 10
        print(
            f"\nother tenant's /v1/models under 150 long-polls: max {max(other) * 1000:.0f} ms, "
            f"median {sorted(other)[len(other) // 2] * 1000:.0f} ms; cancel woke 100 polls in {woke_in:.2f} s"
        )
        assert max(other) < 1.0
    finally:
        stack.stop()
