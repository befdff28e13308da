"""AUTOMATIC1111's own Python client (``webuiapi``, from PyPI) against the gateway, unchanged: only the URL and the
API key (as the HTTP basic password, as A1111 deployments take it) differ."""

from __future__ import annotations

import base64
import io
import json
import threading

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.compat.conftest import KEY_A, KEY_B, png_b64
from tests.conftest import wait_for


def client(gateway: str, key: str = KEY_A) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(baseurl=f"{gateway}/sdapi/v1", username="a1111-user", password=key)


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def native(gateway: str, body: dict, path: str = "/v1/txt2img") -> list[np.ndarray]:
    r = httpx.post(
        f"{gateway}{path}", json=body, headers={"Authorization": f"Bearer {KEY_A}", "Prefer": "wait=60"}, timeout=90
    )
    assert r.status_code == 201, r.text
    return [arr(Image.open(io.BytesIO(httpx.get(o["url"]).content))) for o in r.json()["output"]]


def refusal(call) -> dict:
    with pytest.raises(RuntimeError) as e:
        call()
    status, text = e.value.args
    return {"status": status, **json.loads(text)["error"]}


DIGIT = dict(prompt="7", width=16, height=16, steps=10, cfg_scale=2.0, sampler_name="DDIM")


def test_txt2img_with_a_fixed_seed_reproduces_and_draws_what_the_native_route_draws(gateway):
    api = client(gateway)
    first = api.txt2img(seed=42, **DIGIT)
    again = api.txt2img(seed=42, **DIGIT)
    assert first.image.size == (16, 16) and arr(first.image).std() > 20  # a drawn digit, not a blank
    assert np.array_equal(arr(first.image), arr(again.image))
    assert first.info["seed"] == 42 and first.info["all_seeds"] == [42]
    assert first.info["sampler_name"] == "DDIM" and first.info["sd_model_checkpoint"] == "digits"
    body = {"model": "digits", "prompt": "7", "seed": 42, "num_inference_steps": 10, "guidance_scale": 2.0,
            "scheduler": "ddim", "width": 16, "height": 16}  # fmt: skip
    assert np.array_equal(arr(first.image), native(gateway, body)[0])  # one execution path
    other = api.txt2img(seed=43, **DIGIT)
    assert np.abs(arr(other.image) - arr(first.image)).mean() > 5


def test_a_call_without_a_size_draws_at_the_models_native_size(gateway):
    r = httpx.post(f"{gateway}/sdapi/v1/txt2img", json={"prompt": "7", "steps": 4}, auth=("u", KEY_A), timeout=120)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    info = json.loads(r.json()["info"])
    assert image.size == (16, 16) and (info["width"], info["height"]) == (16, 16)  # digits' own, not A1111's 512


def test_batch_size_and_n_iter_give_distinct_images_with_a1111_seeds(gateway):
    api = client(gateway)
    r = api.txt2img(seed=100, batch_size=2, n_iter=2, **DIGIT)
    assert len(r.images) == 4 and r.info["all_seeds"] == [100, 101, 102, 103] and len(r.info["job_ids"]) == 2
    images = [arr(im) for im in r.images]
    assert all(np.abs(images[i] - images[j]).mean() > 2 for i in range(4) for j in range(i + 1, 4))
    alone = api.txt2img(seed=102, **DIGIT)  # the third image is seed 102's, batched or alone
    assert np.abs(arr(alone.image) - images[2]).max() <= 1
    assert r.info["ignored"] == []  # webuiapi's default payload: nothing that changes the image was dropped


def test_models_samplers_and_options_round_trip_per_tenant(gateway):
    api, other = client(gateway), client(gateway, KEY_B)
    titles = api.util_get_model_names()
    assert {"digits", "tiny-sd"} <= set(titles) and "tiny-wan" not in titles  # image models only
    assert {"Euler a", "DPM++ 2M Karras", "DDIM"} <= set(api.util_get_sampler_names())
    assert [s["name"] for s in api.get_schedulers()] == ["automatic", "karras"]
    api.set_options({"sd_model_checkpoint": "tiny-sd.safetensors [0123abcd]"})  # an A1111-style title
    assert api.get_options()["sd_model_checkpoint"] == "tiny-sd"
    assert other.get_options()["sd_model_checkpoint"] == "digits"  # another tenant's choice is its own
    r = api.txt2img(prompt="a red square", seed=1, width=64, height=64, steps=2, sampler_name="Euler a")
    assert r.image.size == (64, 64) and r.image.mode == "RGB" and r.info["sd_model_checkpoint"] == "tiny-sd"
    assert r.info["scheduler"] == "euler_a"
    r = httpx.post(f"{gateway}/sdapi/v1/options", auth=("u", KEY_A), json={"sd_model_checkpoint": "no-such-model"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "sd_model_checkpoint"  # (webuiapi does not raise)
    assert api.get_options()["sd_model_checkpoint"] == "tiny-sd"
    api.set_options({"sd_model_checkpoint": "digits"})
    assert api.util_get_current_model() == "digits"


def test_img2img_and_inpaint_reach_the_pipeline_with_the_init_image(gateway):
    api = client(gateway)
    kw = dict(prompt="a cat", seed=5, steps=4, width=64, height=64, denoising_strength=0.6, sampler_name="Euler",
              override_settings={"sd_model_checkpoint": "tiny-sd"})  # fmt: skip
    init = [Image.open(io.BytesIO(base64.b64decode(png_b64(64, 64, seed=s)))) for s in (0, 1)]
    a = api.img2img(images=[init[0]], **kw)
    b = api.img2img(images=[init[1]], **kw)
    assert a.image.size == (64, 64) and np.abs(arr(a.image) - arr(b.image)).mean() > 1  # the init image counts
    job = httpx.get(f"{gateway}/v1/jobs/{a.info['job_ids'][0]}", headers={"Authorization": f"Bearer {KEY_A}"}).json()
    assert job["type"] == "img2img" and job["input"]["strength"] == 0.6 and job["input_sha256"]["image"]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    m = api.img2img(images=[init[0]], mask_image=mask, **kw)
    job = httpx.get(f"{gateway}/v1/jobs/{m.info['job_ids'][0]}", headers={"Authorization": f"Bearer {KEY_A}"}).json()
    assert job["type"] == "inpaint" and m.image.size == (64, 64)


def test_controlnet_unit_maps_to_a_controlnet_job_and_returns_the_detected_map(gateway):
    api = client(gateway)
    assert api.has_controlnet  # GET scripts told the client the extension's unit shape is understood
    assert "tiny-controlnet" in api.controlnet_model_list()
    control = Image.new("RGB", (64, 64), "black")
    control.paste((255, 255, 255), (16, 16, 48, 48))
    unit = webuiapi.ControlNetUnit(image=control, module="canny", model="tiny-controlnet [abcd1234]", weight=0.8)
    r = api.txt2img(prompt="a box", seed=2, steps=2, width=64, height=64, sampler_name="Euler", controlnet_units=[unit],
                    override_settings={"sd_model_checkpoint": "tiny-sd"})  # fmt: skip
    assert len(r.images) == 2  # the image, then the detected map (as the extension answers)
    edges = arr(r.images[1])
    assert set(np.unique(edges)) <= {0, 255} and edges.max() == 255  # canny's edges of the square
    job = httpx.get(f"{gateway}/v1/jobs/{r.info['job_ids'][0]}", headers={"Authorization": f"Bearer {KEY_A}"}).json()
    assert job["type"] == "controlnet" and job["input"]["controlnet_conditioning_scale"] == 0.8


def test_progress_shows_the_running_job_and_interrupt_cancels_the_call(gateway):
    api = client(gateway)
    result: dict = {}
    long = dict(prompt="3", seed=1, width=16, height=16, steps=1000, batch_size=8, n_iter=2, sampler_name="DDPM")
    t = threading.Thread(target=lambda: result.update(r=api.txt2img(**long)))
    t.start()
    p = wait_for(lambda: (q := api.get_progress())["state"]["sampling_step"] > 0 and q, 60, what="a running job")
    assert 0 < p["progress"] < 1 and p["state"]["sampling_steps"] == 1000 and p["state"]["job"].startswith("job_")
    preview = wait_for(lambda: api.get_progress()["current_image"], 30, what="a step preview")
    assert Image.open(io.BytesIO(base64.b64decode(preview))).size == (16, 16)
    api.interrupt()
    t.join(60)
    r = result["r"]
    assert r.images == [] and "interrupted" in r.info["notes"][0]
    for job_id in r.info["job_ids"]:
        job = httpx.get(f"{gateway}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY_A}"}).json()
        assert job["status"] == "canceled"
    assert api.get_progress()["state"]["job"] == ""  # nothing left running


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sampler_name": "DPM++ SDE"}, "sampler_name"),  # not served: refused, not swapped silently
        ({"sampler_name": "Euler a", "scheduler": "exponential"}, "scheduler"),
        ({"enable_hr": True}, "enable_hr"),  # would change the image unseen: refused
        ({"restore_faces": True}, "restore_faces"),
        ({"steps": 5000}, "steps"),
        ({"width": 512, "height": 512}, "width"),  # over the engine's pixel limit
        ({"n_iter": 9}, "n_iter"),
    ],
)
def test_refusals_are_422_naming_the_a1111_field(gateway, kwargs, field):
    api = client(gateway)
    err = refusal(lambda: api.txt2img(**{**DIGIT, **kwargs}))
    assert err["status"] == 422 and err["field"] == field, err


def test_auth_and_bad_images(gateway):
    err = refusal(lambda: client(gateway, "wrong-key").txt2img(**DIGIT))
    assert err["status"] == 401
    r = httpx.post(f"{gateway}/sdapi/v1/img2img", auth=("u", KEY_A),
                   json={"init_images": [base64.b64encode(b"GIF89a not allowed").decode()], "prompt": "x"})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["field"] == "init_images"
    huge = png_b64(4100, 4100, mode="L")  # over MAX_IMAGE_PIXELS: the upload rules apply to A1111's base64 too
    body = {"init_images": [huge], "prompt": "x", "override_settings": {"sd_model_checkpoint": "tiny-sd"}}
    r = httpx.post(f"{gateway}/sdapi/v1/img2img", auth=("u", KEY_A), timeout=60, json=body)
    assert r.status_code in (413, 422) and r.json()["error"]["field"] == "init_images", r.text
