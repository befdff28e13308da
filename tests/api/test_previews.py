"""Step previews on the event stream: the engine's predicted x0, and a latent -> RGB projection for pipelines."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.config import Settings
from core.jobs import lifecycle
from core.jobs.execute import execute_job
from core.jobs.store import memory_store
from core.registry import ModelRegistry
from core.schemas import JobType
from core.storage import LocalStorage
from serve import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), rate_limit_per_minute=10_000, torch_threads=1)
    with TestClient(create_app(settings)) as c:
        yield c


def sse(client, job_id: str) -> list[tuple[str, dict]]:
    out, event = [], None
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
    return out


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))).astype(float)


def test_engine_previews_every_n_steps_approach_the_final_image(client):
    body = {"prompt": "8", "num_inference_steps": 12, "scheduler": "ddim", "seed": 4, "preview_every": 2}
    job = client.post("/v1/txt2img", json=body, headers={"Prefer": "wait=30"}).json()
    assert job["status"] == "succeeded"
    events = sse(client, job["id"])
    previews = [d for e, d in events if e == "preview"]
    assert [p["step"] for p in previews] == [2, 4, 6, 8, 10]  # every 2 steps, not the last (the image itself)
    final = np.asarray(Image.open(io.BytesIO(client.get(job["output"][0]["url"]).content))).astype(float)
    images = [decode(p["image"]) for p in previews]
    assert all(im.shape == final.shape for im in images)  # the engine previews at full size
    errors = [np.abs(im - final).mean() for im in images]
    assert errors[-1] < errors[0] and errors[-1] < 10, errors  # the predicted x0 converges on the result
    # progress events are still there, one per step
    assert [d["step"] for e, d in events if e == "progress"] == list(range(1, 13))


def test_no_previews_unless_asked(client):
    job = client.post("/v1/txt2img", json={"prompt": "1", "num_inference_steps": 4}, headers={"Prefer": "wait"}).json()
    assert not [e for e, _ in sse(client, job["id"]) if e == "preview"]


def test_pipeline_previews_project_the_latents_without_the_vae(tiny_models_dir, tmp_path):
    from core.runner import Engines

    engines = Engines(ModelRegistry([tiny_models_dir]), device="cpu", torch_threads=1)
    store, storage = memory_store(), LocalStorage(tmp_path, "k")
    data = {
        "model": "tiny-sd",
        "prompt": "a red house",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "num_inference_steps": 4,
        "guidance_scale": 5.0,
        "scheduler": "euler",
        "seed": 3,
        "num_images": 1,
        "loras": [],
        "timeout_s": 300,
        "preview_every": 1,
    }
    job, _ = lifecycle.submit(store, _NoQueue(), lifecycle.new_job(JobType.txt2img, data, "t"))
    done = execute_job(job.id, store, storage, lambda: engines, "w")
    assert done.status.value == "succeeded"
    previews = [e["data"] for e in store.events.events(job.id) if e["event"] == "preview"]
    assert [p["step"] for p in previews] == [1, 2, 3]
    images = [decode(p["image"]) for p in previews]
    assert images[0].shape == (8, 8, 3)  # the latent's resolution (64 / 8): no VAE decode
    assert np.abs(images[0] - images[-1]).mean() > 1  # the latents change from step to step


class _NoQueue:
    def enqueue(self, job_id, queue):
        pass
