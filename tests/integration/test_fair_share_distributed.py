"""Fair share and priorities in distributed mode, with real processes: one Celery worker, batching off. Tenant A
queues 30 jobs, then B submits one: B's starts after at most 2 more of A's (first in, first out: after all 30); a
`high` job of A's (A may ask for high) starts next."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from tests.integration.stack import A, B, Stack

pytestmark = [pytest.mark.integration]


def started(job: dict) -> datetime:
    return datetime.fromisoformat(job["started_at"])


def test_a_flood_does_not_hold_another_tenant_and_high_starts_next(redis_server, s3_server, tmp_path, logs_dir):
    db = redis_server.rsplit("/", 1)[0] + "/9"  # a database of its own: no other test's backlog
    tenants = tmp_path / "tenants.json"
    tenants.write_text(json.dumps({"acme": {"max_priority": "high"}}))
    env = {"BATCH_WINDOW_MS": "0", "TENANTS_CONFIG": str(tenants), "MAX_ACTIVE_JOBS_PER_TENANT": "100"}
    stack = Stack(db, s3_server, tmp_path, logs_dir, extra_env=env)
    try:
        stack.start_worker("fair")
        body = {"prompt": "3", "num_inference_steps": 4}
        flood = [stack.submit(body, A)["id"] for _ in range(30)]
        b_id = stack.submit(body, B)["id"]
        high = stack.http.post("/v1/txt2img", json={**body, "priority": "high"}, headers=A)
        assert high.status_code == 202, high.text
        refused = stack.http.post("/v1/txt2img", json={**body, "priority": "high"}, headers=B)
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "priority"  # B's ceiling: normal
        b_job = stack.wait(b_id, B)
        high_job = stack.wait(high.json()["id"], A)
        jobs = [stack.wait(i, A, timeout=300) for i in flood]
        assert all(j["status"] == "succeeded" for j in [*jobs, b_job, high_job])
        # A's jobs that started after B's was submitted and before it started: at most 2 (FIFO: every one left)
        b_submitted = datetime.fromisoformat(b_job["created_at"])
        ahead = [j for j in jobs if b_submitted < started(j) < started(b_job)]
        assert len(ahead) <= 2, (len(ahead), [started(j) for j in jobs][:5])
        # the high job, submitted after B's, started before every one of A's that had not started yet
        after_high = [j for j in jobs if started(j) > datetime.fromisoformat(high_job["created_at"])]
        assert all(started(high_job) <= started(j) for j in after_high[1:])
        before_high = [j for j in jobs if b_submitted < started(j) < started(high_job)]
        assert len(before_high) <= 3
        order = sorted([*jobs, b_job, high_job], key=started)
        print(
            f"\nA's jobs started after B's submit and before it: {len(ahead)}; B's job started "
            f"{order.index(b_job) + 1}th of 32, A's high job {order.index(high_job) + 1}th (FIFO: 31st and 32nd)"
        )
    finally:
        stack.stop()
