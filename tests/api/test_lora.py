"""LoRA training through the API on a tiny base model, then per-request adapters."""

import io
import json
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.config import Settings
from serve import create_app
from tests.api.helpers import wait_job


@pytest.fixture(scope="module")
def client(tiny_models_dir, tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("ldata"),
        models_dir=tiny_models_dir,
        warm_models="",
        torch_threads=1,
        rate_limit_per_minute=100_000,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def dataset_zip(n=8, layout="jsonl") -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        lines = []
        for i in range(n):
            img = io.BytesIO()
            a = np.full((64, 64, 3), (200, 40 + 10 * i, 40), np.uint8) + rng.integers(
                0, 20, (64, 64, 3), dtype=np.uint8
            )
            Image.fromarray(a).save(img, format="PNG")
            zf.writestr(f"img{i}.png", img.getvalue())
            if layout == "jsonl":
                lines.append(json.dumps({"file_name": f"img{i}.png", "text": "a red style photo"}))
            else:
                zf.writestr(f"img{i}.txt", "a red style photo")
        if lines:
            zf.writestr("metadata.jsonl", "\n".join(lines))
    return buf.getvalue()


def wait(client, job_id):
    return wait_job(client, job_id)


def train(client, name, steps=40, layout="jsonl", **extra):
    up = client.post("/v1/uploads", files={"file": ("d.zip", dataset_zip(layout=layout), "application/zip")}).json()[
        "id"
    ]
    r = client.post(
        "/v1/trainings/lora",
        json={
            "base_model": "tiny-sd",
            "name": name,
            "dataset": up,
            "rank": 4,
            "learning_rate": 1e-2,
            "max_train_steps": steps,
            "train_batch_size": 2,
            "resolution": 64,
            "seed": 0,
            **extra,
        },
    )
    assert r.status_code == 202, r.text
    return r.json()["id"]


def image(client, loras=(), seed=5) -> bytes:
    r = client.post(
        "/v1/txt2img",
        json={
            "model": "tiny-sd",
            "prompt": "a red style photo",
            "seed": seed,
            "scheduler": "ddim",
            "num_inference_steps": 2,
            "loras": list(loras),
        },
    )
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    return client.get(job["output"][0]["url"]).content


@pytest.fixture(scope="module")
def trained(client):
    base_before = image(client)
    job = wait(client, train(client, "red-style"))
    assert job["status"] == "succeeded", job
    return job, base_before


def test_lora_training_lowers_loss_and_registers(client, trained):
    job, _ = trained
    card = json.loads(client.get(job["output"][1]["url"]).content)
    assert card["dataset_size"] == 8 and card["steps"] == 40 and card["base_model"] == "tiny-sd"
    events = client.get(f"/v1/jobs/{job['id']}/events").text
    losses = [json.loads(ln[6:])["loss"] for ln in events.splitlines() if ln.startswith("data: ") and '"loss"' in ln]
    assert len(losses) == 40 and np.mean(losses[-10:]) < np.mean(losses[:10])


def test_lora_file_loads_in_plain_diffusers(client, trained, tiny_models_dir, tmp_path):
    import diffusers

    job, _ = trained
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(client.get(job["output"][0]["url"]).content)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_models_dir / "tiny-sd")
    pipe.load_lora_weights(str(tmp_path), adapter_name="x")
    assert "x" in pipe.get_active_adapters()


def test_scale_zero_is_base_scale_one_changes_and_base_is_unchanged_after(client, trained):
    _, base_before = trained
    assert image(client) == base_before  # the training never touched the served pipeline
    assert image(client, [{"name": "red-style", "scale": 0.0}]) == base_before
    assert image(client, [{"name": "red-style", "scale": 1.0}]) != base_before
    assert image(client) == base_before  # no adapter left active


def test_loras_compose(client, trained):
    job = wait(client, train(client, "red-style-2", steps=10, layout="txt"))
    assert job["status"] == "succeeded", job
    one = image(client, [{"name": "red-style", "scale": 1.0}])
    both = image(client, [{"name": "red-style", "scale": 1.0}, {"name": "red-style-2", "scale": 1.0}])
    assert one != both


def test_cancel_registers_nothing(client):
    from tests.conftest import wait_for

    job_id = train(client, "never", steps=5000)
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] >= 2, 120, what="training running")
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert wait(client, job_id)["status"] == "canceled"
    r = client.post("/v1/txt2img", json={"model": "tiny-sd", "prompt": "x", "loras": [{"name": "never", "scale": 1}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "loras.0.name"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"base_model": "digits"}, "base_model"),
        ({"base_model": "tiny-wan"}, "base_model"),
        ({"base_model": "nope"}, "base_model"),
        ({"resolution": 60}, "resolution"),
        ({"dataset": "upl_" + "1" * 32}, "dataset"),
        ({"name": "../../etc"}, "name"),
    ],
)
def test_bad_lora_training_requests(client, body, field):
    base = {"base_model": "tiny-sd", "name": "ok", "dataset": "upl_" + "0" * 32, "resolution": 64}
    r = client.post("/v1/trainings/lora", json={**base, **body})
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
