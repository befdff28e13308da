"""A request costs what it says, and nothing a client sends is stored or echoed unbounded: every string and list of
the v1 request models has a bound the spec states; an unknown key is not echoed whole in a 422; a grid's base request
carries no webhook (nothing would check or deliver it) and a grid's total work is capped before it is queued."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from core.tasks import TASKS
from serve import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("bounds"),
        torch_threads=1,
        rate_limit_per_minute=100_000,
        grid_max_total_steps=500,
        allowed_hosts="testserver",
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _unbounded(schema: dict, defs: dict, path: str, seen: set) -> list[str]:
    """Every string without maxLength, an anchored pattern or an enum; every list without maxItems; every free-form
    object, in a request model's JSON schema."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        return _unbounded(defs[name], defs, path, seen | {name})
    out = []
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            out += _unbounded(sub, defs, path, seen)
    kind = schema.get("type")
    if kind == "string" and not ("maxLength" in schema or "enum" in schema or "const" in schema):
        pattern = schema.get("pattern", "")
        if not (pattern.startswith("^") and pattern.endswith("$") and "*" not in pattern and "+" not in pattern):
            out.append(f"{path}: string")
    if kind == "array":
        if "maxItems" not in schema:
            out.append(f"{path}: array")
        out += _unbounded(schema.get("items", {}), defs, path + "[]", seen)
    if kind == "object" or "properties" in schema:
        if schema.get("additionalProperties") not in (None, False):
            out.append(f"{path}: free-form object")
        for name, sub in schema.get("properties", {}).items():
            out += _unbounded(sub, defs, f"{path}.{name}", seen)
    return out


@pytest.mark.parametrize("job_type", list(TASKS), ids=lambda t: t.value)
def test_every_field_a_client_sends_has_a_bound(job_type):
    schema = TASKS[job_type].request.model_json_schema()
    found = _unbounded(schema, schema.get("$defs", {}), job_type.value, set())
    # an image is a data: URI turned into an upload before the job is stored (bounded by MAX_BODY_BYTES and pixels)
    found = [f for f in found if not f.split(":")[0].endswith(("image", "control_image", "mask_image"))]
    assert found == []


def test_an_unknown_key_of_a_megabyte_is_not_echoed_back(client):
    key = "k" * 1_000_000
    r = client.post("/v1/txt2img", json={"prompt": "3", key: 1})
    assert r.status_code == 422
    assert len(r.content) < 2000 and r.json()["error"]["field"].startswith("kkk")


def test_a_prompt_past_its_bound_is_refused_without_being_echoed(client):
    r = client.post("/v1/txt2img", json={"prompt": "p" * 200_000})
    assert r.status_code == 422 and r.json()["error"]["field"] == "prompt" and len(r.content) < 2000


def test_a_grid_base_request_with_a_webhook_is_refused_and_nothing_queued(client):
    before = client.get("/v1/jobs").json()["data"]
    body = {
        "base": {"model": "digits", "prompt": "3", "webhook": "http://169.254.169.254/latest/meta-data/"},
        "x": {"param": "seed", "values": [1, 2]},
    }
    r = client.post("/v1/grids", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "base" and "webhook" in r.json()["error"]["message"]
    assert client.get("/v1/jobs").json()["data"] == before


def test_a_grid_over_its_total_steps_is_refused_before_it_is_queued(client):
    before = client.get("/v1/jobs").json()["data"]
    body = {
        "base": {"model": "digits", "prompt": "3", "num_inference_steps": 100},
        "x": {"param": "seed", "values": list(range(8))},
        "y": {"param": "guidance_scale", "values": [1, 2]},
    }
    r = client.post("/v1/grids", json=body)  # 16 cells x 100 steps = 1,600 > 500
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "too_expensive" and "1,600" in r.json()["error"]["message"]
    assert client.get("/v1/jobs").json()["data"] == before
    body["base"]["num_inference_steps"] = 30  # 480: within the cap
    assert client.post("/v1/grids", json=body).status_code == 202


def test_a_grid_axis_value_is_a_bounded_string(client):
    body = {"base": {"model": "digits", "prompt": "3"}, "x": {"param": "scheduler", "values": ["d" * 100_000]}}
    r = client.post("/v1/grids", json=body)
    assert r.status_code == 422 and len(r.content) < 2000


@pytest.mark.parametrize("route", ["/v1/txt2img", "/v1/predictions"])
def test_a_webhook_with_a_port_out_of_range_is_a_422_naming_it(client, route):
    body = {"prompt": "3", "webhook": "http://example.com:99999/"}
    if route == "/v1/predictions":
        body = {"version": "digits", "input": {"prompt": "3"}, "webhook": "http://example.com:65536/"}
    r = client.post(route, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "webhook"


def test_every_image_seed_of_a_job_is_one_a_request_may_ask_for(client):
    r = client.post("/v1/txt2img", json={"prompt": "3", "seed": 4294967295, "num_images": 3})
    assert r.status_code == 422 and r.json()["error"]["field"] == "seed", r.text
    r = client.post("/v1/txt2img", json={"prompt": "3", "seed": 4294967293, "num_images": 3, "num_inference_steps": 2})
    assert r.status_code == 202, r.text


def test_a_404_does_not_echo_a_long_id(client):
    r = client.get("/v1/jobs/job_" + "a" * 60_000)
    assert r.status_code == 404 and len(r.content) < 1000
