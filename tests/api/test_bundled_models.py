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
