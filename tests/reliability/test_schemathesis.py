"""Fuzz the committed spec (openapi/openapi.json) against the gateway: thousands of generated requests, no 5xx.

The spec states what the gateway enforces (bounds, patterns, the 60-second wait), so most generated requests
pass validation and reach the logic behind it. Jobs are queued but not run (the queue here only records them):
this holds the HTTP boundary, not the engine.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from api.config import Settings
from api.main import create_app
from tests.conftest import REPO

schema = schemathesis.openapi.from_path(REPO / "openapi" / "openapi.json")
AUTH = {"Authorization": "Bearer key-fuzz"}
EXAMPLES_PER_OPERATION = 150
TALLY = {"cases": 0, "server_errors": [], "by_status": {}}


class RecordingQueue:
    def __init__(self):
        self.items = []

    def enqueue(self, job_id, queue):
        self.items.append(job_id)

    def ping(self):
        return True


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    s = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), api_keys="fuzz:key-fuzz", rate_limit_per_minute=1_000_000,
                 max_active_jobs_per_tenant=1_000_000, max_waits_per_tenant=1_000_000, max_wait_s=0.05,
                 warm_models="", max_body_bytes=256 * 1024, max_upload_bytes=256 * 1024)
    app = create_app(s)
    with TestClient(app):  # runs the lifespan: backends built and started
        app.state.backends.queue = RecordingQueue()
        schema.app = app
        yield app


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, fuzz_app):
    response = case.call(headers=AUTH)
    TALLY["cases"] += 1
    TALLY["by_status"][response.status_code] = TALLY["by_status"].get(response.status_code, 0) + 1
    if response.status_code >= 500:
        TALLY["server_errors"].append((case.method, case.formatted_path, response.status_code, response.text[:200]))
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"code", "message"}  # every failure is the JSON envelope


@pytest.mark.slow
def test_fuzz_ran_enough_cases():
    print(f"\nschemathesis: {TALLY['cases']} cases, {len(TALLY['server_errors'])} server errors, "
          f"by status {dict(sorted(TALLY['by_status'].items()))}")
    assert TALLY["cases"] >= 2000 and not TALLY["server_errors"]
