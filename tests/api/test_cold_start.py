"""Cold start: the first job after the service starts accounts for all of its time (issue 10: the runner's start
was invisible: 7.2 s end to end, 1.5 s of inference in the metrics, 0 ms load, 4 ms queue)."""

from __future__ import annotations

import os
import threading
import time

import httpx

from core.pipelines.cache import PipelineCache
from tests.conftest import Proc, free_port, gateway_cmd, wait_for

PARTS = ("queue_ms", "startup_ms", "load_ms", "inference_ms", "upload_ms", "other_ms")


def test_first_job_after_start_accounts_for_its_time(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "S3_BUCKET", "API_KEYS")}
    env.update(DATA_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    proc = Proc(gateway_cmd(port), tmp_path / "api.log", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        # the first request the service can answer is the first job: torch, the engines and the model load after it
        wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, 30, what="the gateway")
        with httpx.Client(base_url=url, timeout=120) as http:
            t0 = time.perf_counter()
            job = http.post("/v1/txt2img", json={"prompt": "3", "num_inference_steps": 2, "seed": 5}).json()
            while job["status"] not in ("succeeded", "failed", "canceled"):
                job = http.get(f"/v1/jobs/{job['id']}?wait=30").json()
            seen_ms = (time.perf_counter() - t0) * 1000
        assert job["status"] == "succeeded", job
        m = job["metrics"]
        # the parts add up to the total, and the total is nearly all the client saw: the rest is HTTP and the
        # gateway's own first request (a cold venv compiles and imports then: 280 ms of 3.3 s on a fresh CI clone)
        assert abs(sum(m[k] for k in PARTS) - m["total_ms"]) < 0.01 * m["total_ms"] + 1, m
        assert m["total_ms"] <= seen_ms and seen_ms - m["total_ms"] < 0.15 * seen_ms, (m, seen_ms)
        # the cold start shows where it happened: the engines (torch) starting and the model loading or warming
        assert m["startup_ms"] + m["load_ms"] > 0.5 * m["total_ms"], m
        assert m["other_ms"] < 0.2 * m["total_ms"], m
        # the next job is warm: no start-up, no load
        with httpx.Client(base_url=url, timeout=60) as http:
            job = http.post("/v1/txt2img", json={"prompt": "3", "num_inference_steps": 2, "seed": 6}).json()
            job = http.get(f"/v1/jobs/{job['id']}?wait=30").json()
        assert job["status"] == "succeeded" and job["metrics"]["load_ms"] == 0, job["metrics"]
        assert job["metrics"]["startup_ms"] < 5, job["metrics"]
    finally:
        proc.stop()


def test_a_job_waiting_for_a_warm_up_counts_the_wait_as_its_load():
    cache = PipelineCache(10**9)
    started = threading.Event()

    def slow_load():
        started.set()
        time.sleep(0.3)  # a model load that takes 300 ms
        return object()

    warm = threading.Thread(target=lambda: cache.get(("engine", "m", "v"), slow_load))
    warm.start()
    assert started.wait(5)
    item, load_ms = cache.get(("engine", "m", "v"), lambda: (_ for _ in ()).throw(AssertionError("loaded twice")))
    warm.join()
    assert item is not None and 200 <= load_ms < 2000, load_ms
    assert cache.get(("engine", "m", "v"), object)[1] == 0.0  # then warm
