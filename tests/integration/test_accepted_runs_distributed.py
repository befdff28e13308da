"""Accepted ⇒ runs in distributed mode: the gateway (uvicorn) queues through redis-server to a real Celery worker,
which writes to moto_server (S3 over HTTP). The same cases and property as ``tests/api/test_accepted_runs.py``:
the smallest request of every served model and task succeeds at the native size, and drawn requests are refused
at submit naming a field or succeed with exactly the images asked for, at the size asked for.

Example count: ``ACCEPTED_RUNS_DISTRIBUTED_EXAMPLES`` (default 54: three per served model and task, derandomized),
fewer than embedded mode's since each one crosses the queue and S3.
"""

from __future__ import annotations

import os

import httpx
import pytest

from tests.api.test_accepted_runs import holds, run_property, served_cases, smallest_request, spec_fields
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("ACCEPTED_RUNS_DISTRIBUTED_EXAMPLES", "54"))


@pytest.fixture(scope="module")
def stack(redis_server, s3_server, tiny_models_dir, tmp_path_factory, logs_dir):
    s = Stack(
        redis_server,
        s3_server,
        tmp_path_factory.mktemp("accepted-dist"),
        logs_dir,
        api_keys="",
        extra_env={"MODELS_DIR": str(tiny_models_dir), "WARM_MODELS": ""},
    )
    s.start_worker("accepted")
    yield s
    s.stop()


def fetch(url: str) -> bytes:
    r = httpx.get(url, timeout=30)  # a presigned S3 URL
    assert r.status_code == 200, url
    return r.content


def test_the_smallest_request_runs_for_every_model_and_task(stack):
    fields, failures = spec_fields(stack.http), []
    cases = served_cases(stack.http)
    assert {c.task for c in cases} == {"txt2img", "img2img", "inpaint", "controlnet", "video"}
    for case in cases:
        try:
            assert holds(stack.http, fetch, case, smallest_request(case), case.native, fields) == "ran"
        except AssertionError as e:
            failures.append((case.id, str(e)[:300]))
    assert not failures, failures


def test_drawn_requests_are_refused_naming_a_field_or_run_as_asked(stack):
    """The property over ``ACCEPTED_RUNS_DISTRIBUTED_EXAMPLES`` drawn requests (derandomized)."""
    run_property(stack.http, fetch, served_cases(stack.http), spec_fields(stack.http), EXAMPLES, timeout=120)
