import json
import subprocess
import sys

from tests.conftest import REPO


def test_committed_spec_matches_the_app():
    out = subprocess.run([sys.executable, "scripts/export_openapi.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_spec_documents_errors_and_jobs():
    spec = json.loads((REPO / "openapi" / "openapi.json").read_text())
    post = spec["paths"]["/v1/txt2img"]["post"]
    assert post["operationId"] == "txt2img" and "202" in post["responses"]
    assert post["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events", "/v1/uploads"} <= set(spec["paths"])
