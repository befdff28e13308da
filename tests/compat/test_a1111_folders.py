"""A MODELS_DIR as AUTOMATIC1111 and ComfyUI users have it (``Stable-diffusion/``, ``Lora/``, ``ControlNet/`` or
``checkpoints/``, ``loras/``, ``controlnet/``), served by a gateway process without conversion, and A1111's own client
(``webuiapi``) seeing the checkpoints by A1111's names and hashes."""

from __future__ import annotations

import hashlib
import io

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.compat.conftest import KEY_A
from tests.conftest import embedded_gateway
from tests.fixtures.single_file import LAYOUTS, build_user_folders


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def served(request, tiny_models_dir, tmp_path_factory):
    """(layout, gateway URL, the files) of a gateway in embedded mode over a MODELS_DIR in ``layout``."""
    tmp = tmp_path_factory.mktemp(f"folders-{request.param}")
    files = build_user_folders(tiny_models_dir, tmp / "models", request.param)
    with embedded_gateway(tmp, tmp / "models", API_KEYS=f"acme:{KEY_A}") as url:
        yield request.param, url, files


def client(url: str) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(baseurl=f"{url}/sdapi/v1", username="a1111-user", password=KEY_A)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def native(url: str, body: dict) -> np.ndarray:
    r = httpx.post(
        f"{url}/v1/txt2img",
        json=body,
        headers={"Authorization": f"Bearer {KEY_A}", "Prefer": "wait=60"},
        timeout=90,
    )
    assert r.status_code == 201, r.text
    return arr(Image.open(io.BytesIO(httpx.get(r.json()["output"][0]["url"]).content)))


def test_webuiapi_lists_the_checkpoints_by_a1111s_names_and_hashes(served):
    _, url, files = served
    api = client(url)
    models = {m["model_name"]: m for m in api.get_sd_models()}
    full = sha256(files["checkpoint"])
    assert models["sd15-tiny"]["title"] == f"sd15-tiny.safetensors [{full[:10]}]"
    assert models["sd15-tiny"]["hash"] == full[:10] and models["sd15-tiny"]["sha256"] == full
    assert models["sd15-tiny"]["filename"] == "sd15-tiny.safetensors"
    styled = sha256(files["styled"])
    assert models["sd15-styled"]["title"] == f"styles/sd15-styled.safetensors [{styled[:10]}]"
    assert f"styles/sd15-styled.safetensors [{styled[:10]}]" in api.util_get_model_names()
    assert "legacy" not in models and "tiny-sd" in models  # the .ckpt is skipped; the diffusers folder beside it
    assert {"ink-kohya", "ink-peft"} <= {lora["name"] for lora in api.get_loras()}
    r = httpx.get(f"{url}/controlnet/model_list", auth=("u", KEY_A))
    assert "canny-tiny" in r.json()["model_list"]
    cn = {m["id"]: m for m in httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY_A}"}).json()}
    assert "sd15-tiny" in cn["canny-tiny"]["base_models"]


def test_a_checkpoint_is_chosen_by_title_name_or_hash(served):
    _, url, files = served
    api = client(url)
    full = sha256(files["styled"])
    for name in (f"styles/sd15-styled.safetensors [{full[:10]}]", "sd15-styled", full[:10], full):
        api.set_options({"sd_model_checkpoint": "tiny-sd"})
        api.set_options({"sd_model_checkpoint": name})
        options = api.get_options()
        assert options["sd_model_checkpoint"] == f"styles/sd15-styled.safetensors [{full[:10]}]", name
        assert options["sd_checkpoint_hash"] == full
    assert api.util_get_current_model() == f"styles/sd15-styled.safetensors [{full[:10]}]"
    # a title whose name is unknown but whose hash is known: the hash finds it (A1111 renames keep the hash)
    api.set_options({"sd_model_checkpoint": f"renamed.safetensors [{sha256(files['checkpoint'])[:10]}]"})
    assert api.get_options()["sd_model_checkpoint"].startswith("sd15-tiny.safetensors [")
    r = httpx.post(f"{url}/sdapi/v1/options", auth=("u", KEY_A), json={"sd_model_checkpoint": "0123456789"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "sd_model_checkpoint"


def test_webuiapi_draws_with_a_single_file_and_a_kohya_lora_as_the_diffusers_twins_draw(served):
    _, url, files = served
    api = client(url)
    title = f"sd15-tiny.safetensors [{sha256(files['checkpoint'])[:10]}]"
    common = dict(seed=11, width=64, height=64, steps=3, cfg_scale=6.0, sampler_name="DDIM")
    single = api.txt2img(prompt="a photo of a cat", override_settings={"sd_model_checkpoint": title}, **common)
    assert single.info["sd_model_checkpoint"] == "sd15-tiny"
    assert single.info["sd_model_hash"] == sha256(files["checkpoint"])[:10]
    body = {"prompt": "a photo of a cat", "seed": 11, "width": 64, "height": 64, "num_inference_steps": 3,
            "guidance_scale": 6.0, "scheduler": "ddim"}  # fmt: skip
    assert np.array_equal(arr(single.image), native(url, {**body, "model": "tiny-sd"}))
    kohya = api.txt2img(
        prompt="a photo of a cat <lora:ink-kohya:0.8>", override_settings={"sd_model_checkpoint": title}, **common
    )
    peft = native(url, {**body, "model": "tiny-sd", "loras": [{"name": "ink-peft", "scale": 0.8}]})
    assert np.abs(arr(kohya.image) - arr(single.image)).max() > 10
    assert np.abs(arr(kohya.image) - peft).max() <= 1
