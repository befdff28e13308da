"""The adapters carry the fleet's contract: Replicate's metrics.predict_time is the job's device time, and a tenant
past its daily device quota is refused through AUTOMATIC1111's and Replicate's routes as through v1 (429)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from api.config import Settings
from serve import create_app

A = {"Authorization": "Bearer key-acme"}


def app(tmp_path, **kw):
    base = {"data_dir": tmp_path, "api_keys": "acme:key-acme", "warm_models": "", "torch_threads": 1}
    return create_app(Settings(**{**base, **kw}))


def test_replicate_predict_time_is_the_jobs_device_time(tmp_path):
    with TestClient(app(tmp_path)) as c:
        body = {"input": {"prompt": "3", "num_inference_steps": 4}}
        p = c.post("/v1/models/diffuserve/digits/predictions", json=body, headers={**A, "Prefer": "wait=60"}).json()
        assert p["status"] == "succeeded", p
        job = c.get(f"/v1/jobs/{p['id']}", headers=A).json()
        assert p["metrics"]["predict_time"] == job["metrics"]["device_ms"] / 1000 > 0


def test_over_the_daily_quota_the_adapters_answer_429_too(tmp_path):
    config = tmp_path / "tenants.json"
    config.write_text(json.dumps({"acme": {"device_seconds_per_day": 0.001}}))
    with TestClient(app(tmp_path, tenants_config=config)) as c:
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "3", "steps": 4}, headers=A)
        assert r.status_code == 200, r.text  # the job that crosses the line finishes
        body = {"input": {"prompt": "3", "num_inference_steps": 4}}
        for refused in (
            c.post("/sdapi/v1/txt2img", json={"prompt": "3", "steps": 4}, headers=A),
            c.post("/v1/models/diffuserve/digits/predictions", json=body, headers=A),
        ):
            assert refused.status_code == 429 and "device_seconds_per_day" in refused.text, refused.text
            assert int(refused.headers["retry-after"]) >= 1
