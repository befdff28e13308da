"""Per-tenant quotas, retention, deadlines and safe defaults of the gateway in embedded mode (memory + local disk)."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from api.config import Settings
from serve import create_app
from tests.api.helpers import LONG_JOB, png_bytes, wait_job
from tests.conftest import wait_for

KEYS = "acme:key-acme,globex:key-globex"
A = {"Authorization": "Bearer key-acme"}
B = {"Authorization": "Bearer key-globex"}


def _settings(tmp_path, **kw) -> Settings:
    base = {
        "data_dir": tmp_path,
        "api_keys": KEYS,
        "warm_models": "",
        "torch_threads": 1,
        "rate_limit_per_minute": 10_000,
    }
    return Settings(**{**base, **kw})


def test_active_job_quota_answers_429_and_spares_other_tenants(tmp_path):
    with TestClient(create_app(_settings(tmp_path, max_active_jobs_per_tenant=2))) as c:
        ids = [c.post("/v1/txt2img", json=LONG_JOB, headers=A).json()["id"] for _ in range(2)]
        r = c.post("/v1/txt2img", json=LONG_JOB, headers=A)
        assert (
            r.status_code == 429
            and r.json()["error"]["code"] == "quota_exceeded"
            and int(r.headers["retry-after"]) >= 1
        )
        assert c.post("/v1/txt2img", json={"prompt": "1", "num_inference_steps": 1}, headers=B).status_code == 202
        for job_id in ids:
            c.post(f"/v1/jobs/{job_id}/cancel", headers=A)
        for job_id in ids:
            assert wait_job(c, job_id, A)["status"] == "canceled"
        assert c.post("/v1/txt2img", json={"prompt": "1", "num_inference_steps": 1}, headers=A).status_code == 202


def test_deadline_exceeded(tmp_path):
    with TestClient(create_app(_settings(tmp_path))) as c:
        r = c.post("/v1/txt2img", json={**LONG_JOB, "timeout_s": 1}, headers=A)
        assert r.status_code == 202 and r.json()["input"]["timeout_s"] == 1
        job = wait_job(c, r.json()["id"], A)
        assert job["status"] == "failed" and job["error"]["code"] == "deadline_exceeded", job
        assert job["output"] == []
        # the default is filled in and recorded
        r = c.post("/v1/txt2img", json={"prompt": "1", "num_inference_steps": 1}, headers=A)
        assert r.json()["input"]["timeout_s"] == 300


def test_retention_deletes_jobs_outputs_and_uploads(tmp_path):
    """JOB_TTL_S after a job finishes, its record, events and outputs are gone (GET 404, URL 404), uploads too."""
    with TestClient(create_app(_settings(tmp_path, job_ttl_s=1, reaper_interval_s=0.2))) as c:
        up = c.post("/v1/uploads", files={"file": ("a.png", png_bytes())}, headers=A).json()
        job = wait_job(
            c, c.post("/v1/txt2img", json={"prompt": "3", "num_inference_steps": 1}, headers=A).json()["id"], A
        )
        url = job["output"][0]["url"]
        assert job["status"] == "succeeded" and c.get(url).status_code == 200
        wait_for(lambda: c.get(f"/v1/jobs/{job['id']}", headers=A).status_code == 404, 15, what="job expired")
        assert c.get(url).status_code == 404
        assert c.get(f"/v1/jobs/{job['id']}/events", headers=A).status_code == 404
        assert job["id"] not in c.get("/v1/jobs", headers=A).text
        files = tmp_path / "files"
        wait_for(lambda: not (files / "uploads" / "acme" / up["id"]).exists(), 15, what="upload expired")
        assert not (files / "jobs" / job["id"]).exists()
        r = c.post("/v1/img2img", json={"model": "digits", "prompt": "1", "image": up["id"]}, headers=A)
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_upload"


def test_files_are_served_with_nosniff_and_signing_key_survives_a_restart(tmp_path):
    with TestClient(create_app(_settings(tmp_path))) as c:
        job = wait_job(
            c, c.post("/v1/txt2img", json={"prompt": "3", "num_inference_steps": 1}, headers=A).json()["id"], A
        )
        url = job["output"][0]["url"]
        r = c.get(url)
        assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
    assert (tmp_path / "signing_key").stat().st_mode & 0o777 == 0o600
    with TestClient(create_app(_settings(tmp_path))) as c:  # a restart (or a second gateway on the same DATA_DIR)
        assert c.get(url).status_code == 200


def test_signing_key_warning_in_distributed_mode_without_s3(tmp_path, redis_server, caplog):
    with caplog.at_level(logging.WARNING, logger="diffuserve.api"):
        with TestClient(create_app(_settings(tmp_path, broker_url=redis_server))):
            pass
    assert any("SIGNING_KEY" in r.message for r in caplog.records)


def test_metrics_hide_tenant_models_and_honour_a_token(tmp_path):
    with TestClient(create_app(_settings(tmp_path, metrics_token="scrape-me"))) as c:
        job = c.post(
            "/v1/trainings/ddpm",
            json={"name": "acme-secret-model", "max_train_steps": 2, "train_batch_size": 4},
            headers=A,
        ).json()
        assert wait_job(c, job["id"], A)["status"] == "succeeded"
        done = c.post(
            "/v1/txt2img", json={"model": "acme-secret-model", "prompt": "1", "num_inference_steps": 1}, headers=A
        ).json()
        assert wait_job(c, done["id"], A)["status"] == "succeeded"
        assert c.get("/metrics").status_code == 401
        text = c.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).text
        assert "diffuserve_model_load_seconds" in text and 'model="tenant_model"' in text
        assert "acme-secret-model" not in text


def test_an_unexpected_error_is_a_json_500_with_a_request_id_and_no_internals(tmp_path):
    with TestClient(create_app(_settings(tmp_path)), raise_server_exceptions=False) as c:

        def boom():
            raise RuntimeError("secret at /srv/diffuserve/models and redis://10.0.0.3:6379")

        c.app.state.backends.registry.list = boom
        r = c.get("/v1/models", headers=A)
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert err["code"] == "internal_error" and r.headers["x-request-id"] in err["message"]
        assert "secret" not in r.text and "10.0.0.3" not in r.text and "Traceback" not in r.text
        assert c.get("/healthz").headers["x-request-id"]  # every response carries one
