"""Batching in distributed mode: a worker takes compatible queued jobs along (the collector) and denoises them in
one loop; each job still ends on its own, with the pixels it would have alone."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import wait_for
from tests.integration.stack import Stack

pytestmark = [pytest.mark.integration]


def test_worker_batches_compatible_queued_jobs(redis_server, s3_server, tmp_path, logs_dir):
    db = redis_server.rsplit("/", 1)[0] + "/7"  # a database of its own: a clean batch-size histogram
    stack = Stack(db, s3_server, tmp_path, logs_dir, extra_env={"BATCH_WINDOW_MS": "50"})
    try:
        ids = [stack.submit({"prompt": str(d), "num_inference_steps": 10, "seed": 40 + d})["id"] for d in range(6)]
        stack.start_worker("batcher")  # the six wait in the queue; the first message takes the others along
        jobs = [stack.wait(i) for i in ids]
        assert all(j["status"] == "succeeded" for j in jobs)

        def batch_sizes() -> tuple[float, float]:  # (jobs, batches) as /metrics counts them
            lines = stack.http.get("/metrics").text.splitlines()
            total = [float(x.split()[-1]) for x in lines if x.startswith("diffuserve_batch_size_sum")]
            count = [float(x.split()[-1]) for x in lines if x.startswith("diffuserve_batch_size_count")]
            return sum(total), sum(count)

        # a job's metrics are written just after its status event (the client is woken first)
        wait_for(lambda: batch_sizes()[0] == 6, 10, what="the last batch's metrics")
        assert batch_sizes()[1] < 6  # at least one batch of several jobs
        # an image drawn amid the batch equals the same request alone
        alone = stack.wait(stack.submit({"prompt": "3", "num_inference_steps": 10, "seed": 43})["id"])

        def pixels(job):
            return np.asarray(Image.open(io.BytesIO(httpx.get(job["output"][0]["url"]).content))).astype(int)

        assert np.abs(pixels(jobs[3]) - pixels(alone)).max() <= 1
    finally:
        stack.stop()
