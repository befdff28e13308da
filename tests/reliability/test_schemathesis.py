"""Fuzz the committed spec (openapi/openapi.json) against the gateway over HTTP: thousands of generated requests,
no 5xx, every failure in the JSON envelope.

The spec states what the gateway enforces (bounds, multiples, scheduler names, image-reference and upload-id
patterns, the 60-second wait). What no static spec can know, the names this deployment serves and the uploads it
holds, is filled into a share of the generated bodies (``_target``), so schema-valid requests reach the logic
behind validation instead of stopping at "unknown model". The gateway runs in distributed mode with no worker:
jobs are accepted and stay queued, so this holds the HTTP boundary (real HTTP, real Redis), not the engine.
"""

from __future__ import annotations

import base64
import io
import os
import random
import zipfile

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.api.helpers import png_bytes
from tests.conftest import REPO
from tests.integration.stack import Stack

schema = schemathesis.openapi.from_path(REPO / "openapi" / "openapi.json")
if os.environ.get("FUZZ_MODES"):  # e.g. FUZZ_MODES=positive: only schema-valid data
    schema.config.generation.update(modes=os.environ["FUZZ_MODES"].split(","))
AUTH = {"Authorization": "Bearer key-fuzz"}
EXAMPLES_PER_OPERATION = 150
TALLY = {"cases": 0, "server_errors": [], "by_status": {}, "by_operation": {}}
# a served model per task (the tiny pipelines of MODELS_DIR and the bundled engine model)
MODELS = {
    "/v1/txt2img": ["digits", "tiny-sd", "tiny-sdxl", "tiny-flux"],
    "/v1/img2img": ["tiny-sd", "tiny-sd3"],
    "/v1/inpaint": ["tiny-sd", "tiny-sd-inpaint"],
    "/v1/controlnet": ["tiny-sd"],
    "/v1/video": ["tiny-wan"],
}


@pytest.fixture(scope="module")
def fuzz(redis_server, tiny_models_dir, tmp_path_factory, logs_dir):
    tmp = tmp_path_factory.mktemp("fuzz")
    db = redis_server.rsplit("/", 1)[0] + "/5"  # a database of its own: its queued jobs reach no other test's worker
    stack = Stack(
        db,
        None,
        tmp,
        logs_dir,
        api_keys="fuzz:key-fuzz",
        extra_env={
            "MODELS_DIR": str(tiny_models_dir),
            "RATE_LIMIT_PER_MINUTE": "1000000",
            "MAX_ACTIVE_JOBS_PER_TENANT": "1000000",
            "MAX_WAITS_PER_TENANT": "1000000",
            "MAX_WAIT_S": "0.05",
            "SYNC_MAX_WAIT_S": "0.05",  # AUTOMATIC1111's synchronous routes: 504 with the job ids (no worker here)
            "MAX_BODY_BYTES": "262144",
            "MAX_UPLOAD_BYTES": "262144",
        },
    )
    image = stack.http.post("/v1/uploads", files={"file": ("a.png", png_bytes(64, 64))}, headers=AUTH).json()["id"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.png", png_bytes(64, 64))
    dataset = stack.http.post("/v1/uploads", files={"file": ("d.zip", buf.getvalue())}, headers=AUTH).json()["id"]
    yield {"url": stack.url, "image": image, "dataset": dataset}
    stack.stop()


def _target(case, fuzz: dict) -> None:
    """Fill deployment-specific values into two of three generated bodies (deterministically per body)."""
    body, path = case.body, case.path
    if not isinstance(body, dict) or random.Random(repr(sorted(body.items(), key=str))).random() < 1 / 3:
        return
    if path in MODELS:
        body["model"] = random.Random(str(body)).choice(MODELS[path])
        if body["model"] == "digits":
            body["prompt"] = str(len(str(body)) % 10)
            for k in ("negative_prompt", "loras", "width", "height"):
                body.pop(k, None)
        for k in ("image", "mask_image", "control_image"):
            if k in body:
                body[k] = fuzz["image"]
        body.pop("mask_image", None) if path != "/v1/inpaint" else None
        if path == "/v1/controlnet":
            body["controlnet"] = "tiny-controlnet"
    elif path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
        body["override_settings"] = {"sd_model_checkpoint": random.Random(str(body)).choice(["digits", "tiny-sd"])}
        body.update(width=64, height=64, n_iter=1)
        if "init_images" in body:
            body["init_images"] = [base64.b64encode(png_bytes(64, 64)).decode()]
            body.pop("mask", None)
    elif path == "/v1/trainings/lora":
        body.update(base_model="tiny-sd", dataset=fuzz["dataset"])
    elif path == "/v1/trainings/ddpm":
        body["dataset"] = "digits"


@pytest.mark.slow
@pytest.mark.integration
@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case, fuzz):
    _target(case, fuzz)
    response = case.call(base_url=fuzz["url"], headers=AUTH)
    TALLY["cases"] += 1
    TALLY["by_status"][response.status_code] = TALLY["by_status"].get(response.status_code, 0) + 1
    op = TALLY["by_operation"].setdefault(case.operation.label, [0, 0])
    op[0] += 1
    op[1] += response.status_code < 400
    # the one 5xx a client may get by design: an A1111 call that waited its bound (SYNC_MAX_WAIT_S), jobs queued
    timed_out = response.status_code == 504 and case.path.startswith("/sdapi/") and "still_running" in response.text
    if response.status_code >= 500 and not timed_out:
        TALLY["server_errors"].append((case.method, case.formatted_path, response.status_code, response.text[:200]))
    assert response.status_code < 500 or timed_out, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"code", "message"}  # every failure is the JSON envelope


@pytest.mark.slow
@pytest.mark.integration
def test_fuzz_ran_enough_cases_and_reached_the_logic(fuzz):
    print(
        f"\nschemathesis: {TALLY['cases']} cases, {len(TALLY['server_errors'])} server errors, "
        f"by status {dict(sorted(TALLY['by_status'].items()))}"
    )
    for label, (n, ok) in sorted(TALLY["by_operation"].items()):
        print(f"  {label:35s} {n:4d} cases, {ok:4d} accepted")
    assert TALLY["cases"] >= 2000 and not TALLY["server_errors"]
    with httpx.Client(base_url=fuzz["url"], headers=AUTH) as c:
        assert c.get("/readyz").status_code == 200  # the gateway is still well
