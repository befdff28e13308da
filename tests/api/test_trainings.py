"""Training jobs through the API (embedded mode): the engine's DDPM training, registered and then served."""

import io
import json
import zipfile

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.config import Settings
from serve import create_app
from tests.api.helpers import wait_job

A = {"Authorization": "Bearer ka"}
B = {"Authorization": "Bearer kb"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("tdata"),
        api_keys="a:ka,b:kb",
        warm_models="",
        torch_threads=1,
        rate_limit_per_minute=100_000,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def wait(client, job_id, headers=A):
    return wait_job(client, job_id, headers)


def test_ddpm_training_on_digits_then_serve_it(client):
    r = client.post(
        "/v1/trainings/ddpm",
        headers=A,
        json={
            "name": "my-digits",
            "dataset": "digits",
            "resolution": 8,
            "max_train_steps": 60,
            "train_batch_size": 32,
            "learning_rate": 2e-3,
            "seed": 0,
        },
    )
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    roles = [o["role"] for o in job["output"]]
    assert roles == ["samples", "model_card"]
    card = json.loads(client.get(job["output"][1]["url"]).content)
    assert card["name"] == "my-digits" and card["images"] == 1797 and card["labels"] == [str(i) for i in range(10)]
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=A).text
    losses = [
        json.loads(line[6:])["loss"] for line in events.splitlines() if line.startswith("data: ") and '"loss"' in line
    ]
    assert len(losses) == 60 and sum(losses[-10:]) < sum(losses[:10])
    # registered for tenant a: listed and usable in txt2img like digits
    mine = next(m for m in client.get("/v1/models", headers=A).json() if m["id"] == "my-digits")
    assert mine["labels"] == [str(i) for i in range(10)] and mine["width"] == 8
    r = client.post("/v1/txt2img", headers=A, json={"model": "my-digits", "prompt": "three", "num_inference_steps": 5})
    out = wait(client, r.json()["id"])
    assert out["status"] == "succeeded" and out["model"]["sha256"] == card["version"]
    assert Image.open(io.BytesIO(client.get(out["output"][0]["url"]).content)).size == (8, 8)
    # not for tenant b
    r = client.post("/v1/txt2img", headers=B, json={"model": "my-digits", "prompt": "3"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "model"


def test_ddpm_training_on_an_uploaded_zip_with_class_folders(client):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls, color in (("dark", (20, 20, 20)), ("light", (230, 230, 230))):
            for i in range(4):
                img = io.BytesIO()
                Image.new("RGB", (12, 12), color).save(img, format="PNG")
                zf.writestr(f"{cls}/{i}.png", img.getvalue())
    up = client.post("/v1/uploads", headers=A, files={"file": ("d.zip", buf.getvalue(), "application/zip")}).json()
    r = client.post(
        "/v1/trainings/ddpm",
        headers=A,
        json={
            "name": "shades",
            "dataset": up["id"],
            "resolution": 8,
            "max_train_steps": 10,
            "train_batch_size": 8,
            "objective": "flow",
        },
    )
    job = wait(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    models = {m["id"]: m for m in client.get("/v1/models", headers=A).json()}
    assert models["shades"]["labels"] == ["dark", "light"] and models["shades"]["schedulers"] == ["euler"]
    r = client.post("/v1/txt2img", headers=A, json={"model": "shades", "prompt": "light", "num_inference_steps": 3})
    assert wait(client, r.json()["id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": "digits"}, "name"),  # a served model's name
        ({"name": "x", "dataset": "upl_" + "0" * 32}, "dataset"),
        ({"name": "x", "dataset": "../etc"}, "dataset"),
        ({"name": "../x"}, "name"),
        ({"name": "x", "max_train_steps": 0}, "max_train_steps"),
        ({"name": "x", "objective": "gan"}, "objective"),
    ],
)
def test_bad_ddpm_training_requests(client, body, field):
    r = client.post("/v1/trainings/ddpm", headers=A, json=body)
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


def test_zip_that_is_not_images_fails_the_job_with_a_reason(client):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes.txt", "nothing here")
    up = client.post("/v1/uploads", headers=A, files={"file": ("d.zip", buf.getvalue(), "application/zip")}).json()
    r = client.post("/v1/trainings/ddpm", headers=A, json={"name": "empty", "dataset": up["id"], "max_train_steps": 5})
    job = wait(client, r.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_dataset"
    assert "empty" not in [m["id"] for m in client.get("/v1/models", headers=A).json()]
