import json
import subprocess
import sys

from tests.conftest import REPO


def test_committed_spec_matches_the_app():
    out = subprocess.run(
        [sys.executable, "scripts/export_openapi.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_spec_documents_errors_and_jobs():
    spec = json.loads((REPO / "openapi" / "openapi.json").read_text())
    post = spec["paths"]["/v1/txt2img"]["post"]
    assert post["operationId"] == "txt2img" and "202" in post["responses"]
    assert post["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events", "/v1/uploads"} <= set(
        spec["paths"]
    )


def test_spec_names_exactly_the_schedulers_the_service_knows():
    from typing import get_args

    from core.catalog import ENGINE_SCHEDULERS, FLOW_SCHEDULERS, SCHEDULERS, SchedulerName

    known = (
        {"default"}
        | set(SCHEDULERS)
        | set(FLOW_SCHEDULERS)
        | {n for names in ENGINE_SCHEDULERS.values() for n in names}
    )
    assert set(get_args(SchedulerName)) == known

    from core.catalog import SCHEDULER_DESCRIPTIONS

    assert set(SCHEDULER_DESCRIPTIONS) == known  # GET /v1/schedulers describes each, no more


def test_spec_caps_wait_at_what_the_server_enforces():
    import json

    from tests.conftest import REPO

    spec = json.loads((REPO / "openapi" / "openapi.json").read_text())
    wait = next(p for p in spec["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"] if p["name"] == "wait")
    assert wait["schema"]["maximum"] == 60
