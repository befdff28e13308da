"""Device-time accounting through the API (embedded mode): every job records its share of the device's time, GET
/v1/usage is their sum, and a tenant past device_seconds_per_day gets 429 until the UTC day ends."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from serve import create_app
from tests.api.helpers import wait_job

KEYS = "acme:key-acme,globex:key-globex"
A = {"Authorization": "Bearer key-acme"}
B = {"Authorization": "Bearer key-globex"}
JOB = {"model": "digits", "prompt": "3", "num_inference_steps": 4}


def settings(tmp_path, **kw) -> Settings:
    base = {"data_dir": tmp_path, "api_keys": KEYS, "warm_models": "", "torch_threads": 1, "batch_window_ms": 0}
    return Settings(**{**base, **kw})


def test_usage_is_the_sum_of_the_callers_jobs_device_time(tmp_path):
    with TestClient(create_app(settings(tmp_path))) as c:
        ids = [c.post("/v1/txt2img", json={**JOB, "num_images": n}, headers=A).json()["id"] for n in (1, 2, 1)]
        jobs = [wait_job(c, i, A) for i in ids]
        assert all(j["status"] == "succeeded" and j["metrics"]["device_ms"] > 0 for j in jobs)
        assert all(j["metrics"]["device_ms"] <= j["metrics"]["total_ms"] for j in jobs)
        wait_job(c, c.post("/v1/txt2img", json=JOB, headers=B).json()["id"], B)  # another tenant's: not counted
        report = c.get("/v1/usage", headers=A).json()
        expected = sum(j["metrics"]["device_ms"] for j in jobs) / 1000
        assert report["jobs"] == 3 and report["images"] == 4
        assert report["device_seconds"] == pytest.approx(expected, abs=0.002)
        assert report["by_model"]["digits"]["jobs"] == 3 and len(report["by_day"]) == 1
        assert report["by_day"][0]["device_seconds"] == report["device_seconds"]
        assert c.get("/v1/usage?days=91", headers=A).status_code == 422
        # /metrics: device-seconds per tenant only behind METRICS_TOKEN (here unset: tenants merged)
        lines = [ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("diffuserve_device_seconds_total")]
        assert lines and all('tenant="all"' in ln for ln in lines)


def test_past_the_daily_quota_a_submit_gets_429_naming_it(tmp_path):
    config = tmp_path / "tenants.json"
    config.write_text(json.dumps({"acme": {"device_seconds_per_day": 0.001}}))
    with TestClient(create_app(settings(tmp_path, tenants_config=config))) as c:
        first = wait_job(c, c.post("/v1/txt2img", json=JOB, headers=A).json()["id"], A)
        assert first["status"] == "succeeded"  # the job that crosses the line finishes
        r = c.post("/v1/txt2img", json=JOB, headers=A)
        assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
        assert "device_seconds_per_day" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 86401
        assert c.post("/v1/txt2img", json=JOB, headers=B).status_code == 202  # globex has no quota
