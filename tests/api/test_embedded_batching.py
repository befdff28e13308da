"""The embedded worker batches: jobs that arrive while one runs wait in the in-process queue and run together (a
turn that drained the backlog job by job once left every batch at one job)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from api.config import Settings
from serve import create_app


def batch_sizes(client: TestClient) -> tuple[float, float]:
    text = client.get("/metrics").text
    total = sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("diffuserve_batch_size_sum"))
    count = sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("diffuserve_batch_size_count"))
    return total, count


def test_jobs_queued_behind_a_running_one_run_as_a_batch(tmp_path):
    settings = Settings(data_dir=tmp_path, torch_threads=1, allowed_hosts="testserver", batch_window_ms=20)
    with TestClient(create_app(settings)) as client:
        body = {"model": "digits", "prompt": "2", "num_inference_steps": 30, "scheduler": "ddim"}
        ids = [client.post("/v1/txt2img", json={**body, "seed": i}).json()["id"] for i in range(8)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [client.get(f"/v1/jobs/{i}").json()["status"] for i in ids]
            if all(s == "succeeded" for s in states):
                break
            assert not {"failed", "canceled"} & set(states), states
            time.sleep(0.1)
        else:
            raise AssertionError(f"not all jobs finished: {states}")
        total, count = batch_sizes(client)
        assert total == 8 and count < 8, (total, count)  # 8 jobs in fewer loops than jobs: batches formed
