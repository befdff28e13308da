"""A ComfyUI user's workflows over their own ``models/`` folder (``checkpoints/``, ``loras/``, ``controlnet/``,
single-file ``.safetensors``): the names in the workflow are the file names, and each draws what the ``/v1`` request
naming the registry's stems draws."""

from __future__ import annotations

import io
from contextlib import closing

import numpy as np
import pytest
from PIL import Image

from tests.compat.conftest import KEY_A
from tests.compat.test_comfyui import ComfyClient, arr, native, small, workflow
from tests.conftest import embedded_gateway
from tests.fixtures.single_file import build_user_folders


@pytest.fixture(scope="module")
def served(tiny_models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("comfy-folders")
    build_user_folders(tiny_models_dir, tmp / "models", "comfy")
    with embedded_gateway(tmp, tmp / "models", API_KEYS=f"acme:{KEY_A}") as url:
        yield url


def test_object_info_lists_the_users_files_by_their_stems(served):
    info = ComfyClient(served).get("/object_info")
    assert {"sd15-tiny", "sd15-styled"} <= set(info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0])
    assert {"ink-kohya", "ink-peft"} <= set(info["LoraLoader"]["input"]["required"]["lora_name"][0])
    assert "canny-tiny" in info["ControlNetLoader"]["input"]["required"]["control_net_name"][0]


def test_a_lora_workflow_naming_the_users_files_draws_what_v1_draws(served):
    client = ComfyClient(served)
    wf = small(workflow("lora"), model="styles/sd15-styled.safetensors")  # ComfyUI names a sub-folder's file so
    wf["10"]["inputs"]["lora_name"] = "ink-kohya.safetensors"
    with closing(client.connect()) as ws:
        _, images, _ = client.run(ws, wf)
    got = arr(images["9"][0])
    body = {"model": "sd15-styled", "prompt": "masterpiece best quality girl", "negative_prompt": "bad hands",
            "seed": 851616030078638 % 2**32, "num_inference_steps": 3, "guidance_scale": 8.0, "scheduler": "euler",
            "width": 64, "height": 64}  # fmt: skip
    assert np.array_equal(
        got, native(served, "/v1/txt2img", {**body, "loras": [{"name": "ink-kohya", "scale": 1.0}]})[0]
    )
    assert np.abs(got - native(served, "/v1/txt2img", body)[0]).mean() > 1  # the kohya LoRA changes the image


def test_a_controlnet_workflow_naming_the_users_files_draws_what_v1_draws(served):
    client = ComfyClient(served)
    control = Image.new("RGB", (64, 64), "black")
    control.paste((255, 255, 255), (12, 20, 52, 44))
    buf = io.BytesIO()
    control.save(buf, format="PNG")
    up = client.upload_image(buf.getvalue(), "house.png")
    wf = small(workflow("controlnet_canny"), model="sd15-tiny.safetensors")
    wf["11"]["inputs"]["control_net_name"] = "canny-tiny.safetensors"
    wf["12"]["inputs"]["image"] = up["name"]
    with closing(client.connect()) as ws:
        _, images, _ = client.run(ws, wf)
    body = {"model": "sd15-tiny", "prompt": "a house in the woods", "negative_prompt": "watermark, text",
            "seed": 493542913684232 % 2**32, "num_inference_steps": 3, "guidance_scale": 8.0, "scheduler": "euler",
            "width": 64, "height": 64, "controlnet": "canny-tiny", "control_image": up["name"].split(".")[0],
            "preprocess": "canny", "canny_low_threshold": 102, "canny_high_threshold": 204,
            "controlnet_conditioning_scale": 0.8}  # fmt: skip
    assert np.array_equal(arr(images["9"][0]), native(served, "/v1/controlnet", body)[0])
