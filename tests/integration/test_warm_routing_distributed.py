"""Warm-model routing with real processes: two workers that hold one model each (MAX_WARM_MODELS=1), two models, 40
jobs alternating between them from two clients. A worker takes the jobs of the model it holds: a handful of loads in
all, where taking whatever comes next (AFFINITY_WAIT_S=0, the order of arrival) reloads on most jobs."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.stack import A, B, Stack

pytestmark = [pytest.mark.integration]


def loads(stack: Stack) -> int:
    text = stack.http.get("/metrics").text
    return int(sum(float(v) for v in re.findall(r"^diffuserve_model_load_seconds_count\{[^}]*\} (\S+)$", text, re.M)))


def run(redis_url: str, s3, tmp, logs, affinity_s: str) -> tuple[int, float]:
    env = {"BATCH_WINDOW_MS": "0", "MAX_WARM_MODELS": "1", "WARM_MODELS": "", "AFFINITY_WAIT_S": affinity_s}
    stack = Stack(redis_url, s3, tmp, logs, extra_env=env)
    try:
        stack.start_worker(f"w1-{affinity_s}")
        stack.start_worker(f"w2-{affinity_s}")
        t0 = time.monotonic()
        ids = []
        for i in range(40):  # digits, mnist, digits, ... from A and B in turn
            headers, model = (A, B)[i % 2], ("digits", "mnist")[(i // 2 + i) % 2]
            body = {"model": model, "prompt": "3", "num_inference_steps": 4}
            ids.append((stack.submit(body, headers)["id"], headers))
        jobs = [stack.wait(job_id, headers, timeout=300) for job_id, headers in ids]
        elapsed = time.monotonic() - t0
        assert all(j["status"] == "succeeded" for j in jobs), [j.get("error") for j in jobs]
        loaded = [j for j in jobs if (j["metrics"].get("load_ms") or 0) > 0]
        # a job that loaded its model says so and /metrics counts the same loads, plus any made by an attempt that
        # lost its lease on a starved machine and ran again (its job shows attempts > 1)
        retried = sum(j["attempts"] - 1 for j in jobs)
        assert len(loaded) <= loads(stack) <= len(loaded) + retried, (len(loaded), loads(stack), retried)
        return loads(stack), len(jobs) / elapsed
    finally:
        stack.stop()


def test_workers_keep_their_models_and_load_a_handful_of_times(redis_server, s3_server, tmp_path, logs_dir):
    base = redis_server.rsplit("/", 1)[0]
    routed, routed_rate = run(base + "/10", s3_server, tmp_path / "routed", logs_dir, "30")
    fifo, fifo_rate = run(base + "/11", s3_server, tmp_path / "fifo", logs_dir, "0")
    print(
        f"\n40 jobs, 2 models, 2 workers, MAX_WARM_MODELS=1: warm routing {routed} loads, {routed_rate:.2f} jobs/s; "
        f"no affinity {fifo} loads, {fifo_rate:.2f} jobs/s"
    )
    assert routed <= 4
    assert fifo > routed
