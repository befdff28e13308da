"""Grids (the X/Y plot): one job, a cell per combination (each equal to the same request alone), and a labelled
contact sheet."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.config import Settings
from serve import create_app
from tests.conftest import REPO


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), rate_limit_per_minute=10_000, torch_threads=1)
    with TestClient(create_app(settings)) as c:
        yield c


def pixels(client, item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(item["url"]).content))).astype(float)


def test_cfg_by_scheduler_grid_of_digits(client):
    body = {
        "base": {"model": "digits", "prompt": "3", "num_inference_steps": 20, "seed": 11},
        "x": {"param": "guidance_scale", "values": [1, 2, 4, 8]},
        "y": {"param": "scheduler", "values": ["ddim", "ddpm"]},
    }
    r = client.post("/v1/grids", json=body, headers={"Prefer": "wait=60"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "succeeded" and job["type"] == "grid" and len(job["output"]) == 9
    cells, sheet = job["output"][:8], job["output"][8]
    assert [(c["column"], c["row"]) for c in cells] == [(c, r) for r in range(2) for c in range(4)]
    assert [c["x"] for c in cells[:4]] == [1, 2, 4, 8] and {c["y"] for c in cells[4:]} == {"ddpm"}
    assert job["progress"]["step"] == job["progress"]["total"] == 8 * 20  # one progress over the whole grid
    images = [pixels(client, c) for c in cells]
    assert np.abs(images[0] - images[3]).mean() > 2  # guidance 1 vs 8: different pictures
    assert np.abs(images[1] - images[5]).mean() > 2  # DDIM vs DDPM
    # a cell equals the same request drawn alone
    alone = client.post(
        "/v1/txt2img",
        json={"model": "digits", "prompt": "3", "num_inference_steps": 20, "seed": 11, "guidance_scale": 4,
              "scheduler": "ddpm"},
        headers={"Prefer": "wait=60"},
    ).json()  # fmt: skip
    assert np.abs(pixels(client, alone["output"][0]) - images[6]).max() <= 1
    # the contact sheet: 4 x 2 cells, enlarged to 96 px, with room for the labels
    assert sheet["role"] == "contact_sheet"
    sheet_px = pixels(client, sheet)
    assert sheet_px.shape[0] >= 2 * 96 and sheet_px.shape[1] >= 4 * 96
    left, top = sheet_px.shape[1] - 4 * 96, sheet_px.shape[0] - 2 * 96
    corner = sheet_px[top : top + 96 : 6, left : left + 96 : 6, 0]  # cell (0, 0), every 6th pixel (one per source px)
    assert np.abs(corner - images[0]).max() <= 1
    assert sheet_px[: top - 2, :left].mean() > 200 or left == 0  # the label margin is white paper
    if os.environ.get("SAVE_GRID"):  # the docs' example
        (REPO / "docs").mkdir(exist_ok=True)
        (REPO / "docs" / "grid-digits-cfg-x-scheduler.png").write_bytes(client.get(sheet["url"]).content)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"base": {"prompt": "1"}, "x": {"param": "seed", "values": list(range(65))}}, None),  # 65 cells
        ({"base": {"prompt": "1"}, "x": {"param": "scheduler", "values": ["ddim", "warp"]}}, "x"),
        ({"base": {"prompt": "1"}, "x": {"param": "lora_scale", "values": [0.5, 1]}}, None),  # no LoRA to vary
        ({"base": {"prompt": "1"}, "x": {"param": "num_inference_steps", "values": [10, 5000]}}, None),
        ({"base": {"prompt": "1"}, "x": {"param": "seed", "values": [1]}, "y": {"param": "seed", "values": [2]}}, None),
    ],
)
def test_grids_refused_at_the_boundary(client, body, field):
    r = client.post("/v1/grids", json=body)
    assert r.status_code == 422, r.text
    if field:
        assert r.json()["error"]["field"] == field
