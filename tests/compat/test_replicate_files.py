"""Replicate's file API (``/v1/files``) through Replicate's own clients, unchanged: the Python client's default file
input (``replicate.run(..., input={"image": open(path, "rb")})`` uploads to ``POST /v1/files`` and passes the file's
``urls.get``), the files CRUD, the limits, tenants kept apart, and the JavaScript client (``replicate@1.4.0`` from npm,
run by the machine's Node.js) for ``run``, ``predictions.create`` + ``wait`` and a file input."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ReplicateError

from api.compat import replicate_files
from api.compat.replicate_files import file_id_of_url
from api.errors import ApiError
from core.jobs.lifecycle import sweep_expired
from core.jobs.store import memory_store
from core.storage import LocalStorage
from tests.compat.conftest import KEY_A, KEY_B, png_b64

A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
JS = Path(__file__).resolve().parent / "js"
IMG2IMG = {"prompt": "a cat", "prompt_strength": 0.6, "num_inference_steps": 4, "seed": 5}


def client(gateway: str, key: str = KEY_A, seen: list | None = None) -> replicate.Client:
    hooks = {"request": [lambda req: seen.append((req.method, req.url.path))]}
    return replicate.Client(api_token=key, base_url=gateway, **({"event_hooks": hooks} if seen is not None else {}))


def png_file(tmp_path: Path, seed: int, name: str = "cat.png") -> Path:
    path = tmp_path / name
    path.write_bytes(base64.b64decode(png_b64(64, 64, seed=seed)))
    return path


def pixels(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data))).astype(np.int16)


def fetched(url: str) -> np.ndarray:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    return pixels(r.content)


def native_img2img(gateway: str, image: str, headers: dict = A) -> np.ndarray:
    """The same img2img through /v1 (our names), answered under Prefer: wait."""
    body = {"model": "tiny-sd", "prompt": IMG2IMG["prompt"], "image": image, "strength": IMG2IMG["prompt_strength"],
            "num_inference_steps": IMG2IMG["num_inference_steps"], "seed": IMG2IMG["seed"]}  # fmt: skip
    r = httpx.post(f"{gateway}/v1/img2img", json=body, headers={**headers, "Prefer": "wait=60"}, timeout=90)
    assert r.status_code in (200, 201) and r.json()["status"] == "succeeded", r.text
    return fetched(r.json()["output"][0]["url"])


# -- the Python client --------------------------------------------------------------------------------------------
def test_run_with_an_open_file_uploads_it_and_draws_what_v1_draws_from_the_same_upload(gateway, tmp_path):
    path = png_file(tmp_path, seed=0)
    seen: list = []
    c = client(gateway, seen=seen)
    with open(path, "rb") as f:
        out = c.run("acme/tiny-sd", input={**IMG2IMG, "image": f})  # the default strategy: files.create, then urls
    assert seen == [("POST", "/v1/files"), ("POST", "/v1/models/acme/tiny-sd/predictions")]
    p = c.predictions.list().results[0]  # newest first: this run's prediction
    file_id = p.input["image"]
    assert p.status == "succeeded" and file_id.startswith("upl_")  # the URL resolved to the upload, nothing fetched
    f = c.files.get(file_id)
    assert f.name == "cat.png" and f.checksums["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    drawn = pixels(httpx.get(str(out[0]), timeout=30).content if isinstance(out[0], str) else out[0].read())
    assert drawn.shape == (64, 64, 3)
    assert np.array_equal(drawn, native_img2img(gateway, file_id))  # /v1 with the same upload and seed
    black = io.BytesIO()
    Image.new("RGB", (64, 64)).save(black, format="PNG")
    other = native_img2img(gateway, f"data:image/png;base64,{base64.b64encode(black.getvalue()).decode()}")
    assert not np.array_equal(drawn, other)  # another init image, another picture: the file's pixels reached it


def test_files_create_get_list_download_delete(gateway, tmp_path):
    path = png_file(tmp_path, seed=2, name="dog.png")
    data = path.read_bytes()
    c = client(gateway)
    f = c.files.create(path, metadata={"purpose": "test", "n": 1})
    assert f.id.startswith("upl_") and f.name == "dog.png" and f.content_type == "image/png" and f.size == len(data)
    assert f.checksums == {"sha256": hashlib.sha256(data).hexdigest()} and f.etag == f.checksums["sha256"]
    assert f.metadata == {"purpose": "test", "n": 1} and f.created_at < f.expires_at
    assert f.urls["get"] == f"{gateway}/v1/files/{f.id}/download"
    assert c.files.get(f.id).dict() == f.dict()
    got = httpx.get(f.urls["get"], headers=A)
    assert got.status_code == 200 and got.content == data and got.headers["content-type"] == "image/png"
    assert httpx.get(f.urls["get"]).status_code == 401  # the bytes go to their owner only
    assert f.id in [x.id for x in c.files.list()]
    r = httpx.get(f"{gateway}/v1/files", headers=A).json()
    assert set(r) == {"next", "previous", "results"} and r["previous"] is None
    assert c.files.delete(f.id) is True
    with pytest.raises(ReplicateError) as e:
        c.files.get(f.id)
    assert e.value.status == 404 and e.value.detail  # Replicate's problem details
    assert httpx.get(f.urls["get"], headers=A).status_code == 404
    assert f.id not in [x.id for x in c.files.list()]
    assert httpx.delete(f"{gateway}/v1/files/{f.id}", headers=A).status_code == 404
    # the upload is the service's: its id works on the native routes too
    g = c.files.create(path)
    assert httpx.get(f"{gateway}/v1/files/{g.id}", headers=A).json()["metadata"] == {}
    assert native_img2img(gateway, g.id).shape == (64, 64, 3)


def test_list_pages_with_next(gateway, tmp_path):
    path = png_file(tmp_path, seed=3)
    key = KEY_B  # tenant B: its own list, apart from the other tests' files
    ids = [client(gateway, key).files.create(path).id for _ in range(101)]
    first = httpx.get(f"{gateway}/v1/files", headers=B).json()
    assert len(first["results"]) == 100 and first["next"]
    second = httpx.get(first["next"], headers=B).json()
    assert second["previous"] and not {x["id"] for x in second["results"]} & {x["id"] for x in first["results"]}
    listed = [x["id"] for x in first["results"] + second["results"]]
    assert set(ids) <= set(listed) and listed.index(ids[-1]) < listed.index(ids[0])  # newest first
    for i in ids:
        assert httpx.delete(f"{gateway}/v1/files/{i}", headers=B).status_code == 204


def test_tenants_cannot_see_delete_list_or_use_each_others_files(gateway, tmp_path):
    path = png_file(tmp_path, seed=4)
    mine = client(gateway).files.create(path)
    theirs = client(gateway, KEY_B)
    for call in (lambda: theirs.files.get(mine.id), lambda: theirs.files.delete(mine.id)):
        with pytest.raises(ReplicateError) as e:
            call()
        assert e.value.status == 404
    assert httpx.get(mine.urls["get"], headers=B).status_code == 404
    assert mine.id not in [x.id for x in theirs.files.list()]
    with pytest.raises(ReplicateError) as e:  # the URL names the upload, which is not B's: refused, not fetched
        theirs.predictions.create(model="acme/tiny-sd", input={**IMG2IMG, "image": mine.urls["get"]})
    assert e.value.status == 422 and "unknown upload" in e.value.detail
    assert client(gateway).files.get(mine.id).id == mine.id  # still A's, untouched
    p = client(gateway).predictions.create(model="acme/tiny-sd", input={**IMG2IMG, "image": mine.urls["get"]})
    p.wait()
    assert p.status == "succeeded" and p.input["image"] == mine.id


def test_limits_and_formats(gateway, tmp_path):
    c = client(gateway)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ReplicateError) as e:
        c.files.create(text)
    assert e.value.status == 422 and e.value.title == "invalid_image" and "PNG, JPEG or WebP" in e.value.detail
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"/>'
    r = httpx.post(f"{gateway}/v1/files", headers=A, files={"content": ("x.svg", svg, "image/svg+xml")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_image"
    limit = 50 * 1024 * 1024  # MAX_UPLOAD_BYTES's default: one byte over it, then far over it (the body limit)
    for size in (limit + 1, limit + 1024 * 1024):
        r = httpx.post(f"{gateway}/v1/files", headers=A, timeout=60,
                       files={"content": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(size - 8), "image/png")})  # fmt: skip
        assert r.status_code == 413, r.text
    png = base64.b64decode(png_b64(8, 8))
    bad = [
        ({"metadata": "[1, 2]"}, "metadata"),
        ({"metadata": "{"}, "metadata"),
        ({"metadata": "x" * 5000}, "metadata"),
    ]
    for data, field in bad:
        r = httpx.post(f"{gateway}/v1/files", headers=A, data=data, files={"content": ("a.png", png, "image/png")})
        assert r.status_code in (413, 422) and r.json()["error"]["field"] == field, r.text
    r = httpx.post(f"{gateway}/v1/files", headers=A, files={"file": ("a.png", png, "image/png")})
    assert r.status_code == 422 and r.json()["error"]["field"] == "content"
    # Replicate's HTTP API names: filename and type beside content
    r = httpx.post(f"{gateway}/v1/files", headers=A, data={"filename": "named.png", "type": "image/png"},
                   files={"content": ("blob", png, "application/octet-stream")})  # fmt: skip
    assert r.status_code == 201 and r.json()["name"] == "named.png" and r.json()["content_type"] == "image/png"
    assert httpx.get(f"{gateway}/v1/files", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_an_input_url_resolves_only_when_it_is_this_services_file():
    base = "http://127.0.0.1:8000/"
    fid = "upl_" + "0" * 32
    assert file_id_of_url(f"http://127.0.0.1:8000/v1/files/{fid}/download", base) == fid
    assert file_id_of_url(f"http://127.0.0.1:8000/v1/files/{fid}", base) == fid
    assert file_id_of_url(f"https://api.example.com/sub/v1/files/{fid}", "https://api.example.com/sub/") == fid
    for foreign in (
        f"https://127.0.0.1:8000/v1/files/{fid}",  # another scheme
        f"http://evil.example/v1/files/{fid}",  # another host
        f"http://127.0.0.1:8001/v1/files/{fid}",  # another port
        f"http://127.0.0.1:8000/v1/files/{fid}/download?x=1",
        f"http://127.0.0.1:8000/v1/files/{fid}/../../files/x",
        "http://127.0.0.1:8000/v1/files/upl_x",
        "a cat",
    ):
        assert file_id_of_url(foreign, base) is None, foreign


def test_a_foreign_url_is_still_refused_unfetched(gateway):
    c = client(gateway)
    fid = "upl_" + "1" * 32
    for url in (f"https://api.replicate.com/v1/files/{fid}", "https://example.com/cat.png"):
        with pytest.raises(ReplicateError) as e:
            c.predictions.create(model="acme/tiny-sd", input={**IMG2IMG, "image": url})
        assert e.value.status == 422 and "not fetched" in e.value.detail


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        yield memory_store()
    else:
        from core.jobs.redis_store import redis_store

        # a database of its own: the sweep below must reach no other test's expiries
        s = redis_store(request.getfixturevalue("redis_server").rsplit("/", 1)[0] + "/14")
        yield s
        s.close()


def test_the_list_forgets_swept_files_keeps_those_a_job_kept_and_caps_live_files(store, tmp_path, monkeypatch):
    settings = SimpleNamespace(max_image_pixels=4096 * 4096, job_ttl_s=60)
    b = SimpleNamespace(store=store, storage=LocalStorage(tmp_path, "k"), settings=settings)
    acme, globex = f"acme-{uuid.uuid4().hex[:8]}", f"globex-{uuid.uuid4().hex[:8]}"
    png = base64.b64decode(png_b64(8, 8))
    swept, kept = (replicate_files._save(b, acme, png, n, {}) for n in ("swept.png", "kept.png"))
    b.store.retention.extend_expiry(f"upload:{acme}/{kept['id']}", time.time() + 3600)  # a job reads it: kept longer
    later = time.time() + 120  # both past their expires_at
    assert sweep_expired(b.store, b.storage, at=later) == [f"upload:{acme}/{swept['id']}"]
    assert [f["id"] for f in replicate_files.live_files(b, acme, later)] == [kept["id"]]  # kept: still listed
    assert [r["id"] for r in b.store.registrations.registrations(acme, "replicate_file")] == [kept["id"]]  # pruned
    with pytest.raises(ApiError) as e:
        replicate_files.own_file(b, acme, swept["id"])
    assert e.value.status == 404
    assert replicate_files.live_files(b, globex) == []
    monkeypatch.setattr(replicate_files, "MAX_FILES", 2)
    replicate_files._save(b, acme, png, "two.png", {})
    with pytest.raises(ApiError) as e:
        replicate_files._save(b, acme, png, "three.png", {})
    assert e.value.status == 409 and e.value.code == "too_many_files"
    replicate_files._save(b, globex, png, "other.png", {})  # the cap is per tenant


# -- the JavaScript client ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def js_client(tmp_path_factory) -> Path:
    """tests/compat/js installed (npm ci, the pinned lock) in a folder of this run's own."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("Node.js and npm are not installed: the JavaScript client cannot run (CI has both)")
    where = tmp_path_factory.mktemp("replicate-js")
    for name in ("package.json", "package-lock.json", "client.js"):
        shutil.copy(JS / name, where / name)
    r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=where, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return where


def test_javascript_client_run_predictions_and_a_file_input(gateway, js_client, tmp_path):
    path = png_file(tmp_path, seed=6, name="init.png")
    env = {**os.environ, "GATEWAY": gateway, "KEY": KEY_A, "IMAGE": str(path)}
    r = subprocess.run(["node", "client.js"], cwd=js_client, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout)
    # 1. run(): the URLs of the images, the same pixels as /v1 at the same seed
    body = {"model": "digits", "prompt": "7", "seed": 42, "num_inference_steps": 10, "guidance_scale": 2.0,
            "scheduler": "ddim"}  # fmt: skip
    native = httpx.post(f"{gateway}/v1/txt2img", json=body, headers={**A, "Prefer": "wait=60"}, timeout=90).json()
    assert len(out["run"]) == 1 and np.array_equal(fetched(out["run"][0]), fetched(native["output"][0]["url"]))
    # 2. predictions.create + wait: the job behind it, seed 43's image (not seed 42's)
    p = out["prediction"]
    assert p["created_status"] in ("starting", "processing", "succeeded") and p["status"] == "succeeded"
    job = httpx.get(f"{gateway}/v1/jobs/{p['id']}", headers=A).json()
    assert job["status"] == "succeeded" and job["input"]["seed"] == 43
    assert np.abs(fetched(p["output"][0]) - fetched(out["run"][0])).mean() > 1
    # 3. the Buffer input went through files.create; the job read that upload and drew what /v1 draws from it
    i = out["img2img_prediction"]
    assert i["status"] == "succeeded" and i["input"]["image"].startswith("upl_")
    f = httpx.get(f"{gateway}/v1/files/{i['input']['image']}", headers=A).json()
    assert (
        f["size"] == path.stat().st_size and f["checksums"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert np.array_equal(fetched(out["img2img"][0]), native_img2img(gateway, i["input"]["image"]))
    # 4. the file API: a Blob with metadata, get, list, delete
    made = out["file"]["created"]
    assert made["content_type"] == "image/png" and made["metadata"] == {"purpose": "test"}
    assert out["file"]["got"] == made and made["id"] in out["file"]["listed_ids"]
    assert out["file"]["deleted"] is True and out["file"]["get_after_delete"] == 404
