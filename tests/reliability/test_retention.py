"""Retention on Redis + S3: JOB_TTL_S after a job finishes, its record, events, outputs and uploads are gone: GET 404,
the presigned URL 404, no object left under the job's or the upload's prefix."""

from __future__ import annotations

import httpx
import pytest

from tests.api.helpers import png_bytes
from tests.conftest import wait_for
from tests.integration.stack import A, Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_job_ttl_on_redis_and_s3(redis_server, moto, tmp_path, logs_dir):
    stack = Stack(redis_server, moto.info, tmp_path, logs_dir, extra_env={"JOB_TTL_S": "2"})
    try:
        stack.start_worker("ttl")
        up = stack.http.post("/v1/uploads", files={"file": ("a.png", png_bytes())}, headers=A).json()
        job = stack.wait(stack.submit({"prompt": "4", "num_inference_steps": 2, "num_images": 2})["id"])
        assert job["status"] == "succeeded"
        prefix = tmp_path.name
        # two outputs, and the record (written just after the job turns succeeded)
        wait_for(lambda: len(moto.keys(f"{prefix}/jobs/{job['id']}/")) == 3, 30, what="the outputs and the record")
        assert moto.keys(f"{prefix}/uploads/")
        url = job["output"][0]["url"]
        assert httpx.get(url).status_code == 200
        wait_for(lambda: stack.http.get(f"/v1/jobs/{job['id']}", headers=A).status_code == 404, 30, what="job expired")
        wait_for(lambda: not moto.keys(f"{prefix}/jobs/{job['id']}/"), 30, what="outputs deleted")
        wait_for(lambda: not moto.keys(f"{prefix}/uploads/"), 30, what="upload deleted")
        assert httpx.get(url).status_code in (403, 404)
        assert job["id"] not in stack.http.get("/v1/jobs", headers=A).text
        assert up["id"] not in str(moto.keys(prefix))
    finally:
        stack.stop()
