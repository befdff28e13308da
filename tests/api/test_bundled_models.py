"""A newcomer's first request: every bundled model, at its own defaults, through the API (make run's settings)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.config import Settings
from serve import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("bundled"), torch_threads=1, allowed_hosts="testserver")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("model", ["digits", "mnist"])
def test_each_bundled_model_draws_at_its_defaults(client, model):
    info = next(m for m in client.get("/v1/models").json() if m["id"] == model)
    r = client.post("/v1/txt2img", json={"model": model, "prompt": info["labels"][-1]}, headers={"Prefer": "wait=60"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "succeeded", job["error"]
    out = job["output"][0]
    assert (out["width"], out["height"]) == (info["width"], info["height"])
    pixels = np.asarray(Image.open(io.BytesIO(client.get(out["url"]).content)))
    assert pixels.shape[:2] == (info["height"], info["width"]) and pixels.std() > 10  # a drawn digit, not a flat image


@pytest.mark.parametrize("model", ["digits", "mnist"])
def test_each_bundled_model_draws_with_its_listed_step_cache(client, model):
    """What GET /v1/models offers runs: the listed method with its default knob (filled at submit), recorded on the
    job with what it reused, and the same seed draws the same pixels again."""
    info = next(m for m in client.get("/v1/models").json() if m["id"] == model)
    [offered] = info["cache_methods"]
    body = {"model": model, "prompt": info["labels"][3], "seed": 11, "cache": {"method": offered["method"]}}
    jobs = [client.post("/v1/txt2img", json=body, headers={"Prefer": "wait=60"}).json() for _ in range(2)]
    for job in jobs:
        assert job["status"] == "succeeded", job["error"]
        assert job["input"]["cache"] == offered  # the default knob filled in, as listed
        steps = info["default_num_inference_steps"]
        assert f"reused {steps - -(-steps // offered['interval'])} of {steps}" in job["versions"]["step_cache"]
    a, b = (client.get(job["output"][0]["url"]).content for job in jobs)
    assert a == b


@pytest.mark.parametrize(
    ("cache", "field"),
    [
        ({"method": "first_block"}, "cache"),
        ({"method": "deep", "threshold": 0.1}, "cache"),
        ({"method": "deep", "interval": 0}, "cache.interval"),
        ({"method": "teacache"}, "cache.method"),
        ({"method": "deep", "interval": 11}, "interval must be in [1, 10]"),
    ],  # fmt: skip
)
def test_a_step_cache_the_model_does_not_take_is_refused_by_name(client, cache, field):
    r = client.post("/v1/txt2img", json={"model": "digits", "prompt": "3", "cache": cache})
    assert r.status_code == 422, r.text
    assert field in r.text
