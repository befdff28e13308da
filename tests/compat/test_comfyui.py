"""ComfyUI's API driven the way ComfyUI's own ``script_examples/websockets_api_example.py`` drives it (urllib for
HTTP, the ``websocket-client`` package for ``/ws``), with workflows as ComfyUI's "Save (API)" exports them
(``comfyui_workflows/``): each draws the same pixels as the ``/v1`` request it means."""

from __future__ import annotations

import base64
import copy
import io
import json
import struct
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest
import websocket
from PIL import Image

from tests.compat.conftest import KEY_A, KEY_B
from tests.conftest import embedded_gateway, wait_for

WORKFLOWS = Path(__file__).resolve().parent / "comfyui_workflows"


def workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


# -- a ComfyUI API client, as websockets_api_example.py writes one (plus the API key a hosted service needs) ---------
class ComfyClient:
    def __init__(self, url: str, key: str = KEY_A, client_id: str | None = None):
        self.url, self.key = url, key
        self.host = url.removeprefix("http://")
        self.client_id = client_id or str(uuid.uuid4())
        self.headers = {"Authorization": f"Bearer {key}"}

    def _open(self, path: str, data: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(f"{self.url}{path}", data=data, headers={**self.headers, **(headers or {})})
        return urllib.request.urlopen(req, timeout=120)

    def queue_prompt(self, prompt: dict, prompt_id: str | None = None) -> dict:
        p = {"prompt": prompt, "client_id": self.client_id}
        if prompt_id:
            p["prompt_id"] = prompt_id
        data = json.dumps(p).encode("utf-8")
        try:
            with self._open("/prompt", data, {"Content-Type": "application/json"}) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # the answer in the error's text, still readable
            body = e.read()
            raise urllib.error.HTTPError(e.url, e.code, body.decode()[:2000], e.hdrs, io.BytesIO(body)) from None

    def refusal(self, prompt: dict) -> tuple[int, dict]:
        with pytest.raises(urllib.error.HTTPError) as e:
            self.queue_prompt(prompt)
        return e.value.code, json.loads(e.value.read())

    def get_image(self, filename: str, subfolder: str, folder_type: str) -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        with self._open(f"/view?{query}") as r:
            return r.read()

    def get_history(self, prompt_id: str | None = None) -> dict:
        with self._open(f"/history/{prompt_id}" if prompt_id else "/history") as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> int:
        with self._open(path, json.dumps(body).encode(), {"Content-Type": "application/json"}) as r:
            return r.status

    def get(self, path: str):
        with self._open(path) as r:
            return json.loads(r.read())

    def upload_image(self, png: bytes, name: str = "example.png") -> dict:
        r = httpx.post(f"{self.url}/upload/image", headers=self.headers, files={"image": (name, png, "image/png")},
                       data={"overwrite": "true", "type": "input"}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        return r.json()

    def connect(self) -> websocket.WebSocket:
        ws = websocket.WebSocket()
        ws.connect(f"ws://{self.host}/ws?clientId={self.client_id}", header=[f"Authorization: Bearer {self.key}"])
        ws.settimeout(120)
        return ws

    def run(self, ws: websocket.WebSocket, prompt: dict) -> tuple[str, dict[str, list[bytes]], list]:
        """Queue ``prompt``, read the socket until ComfyUI's end of the prompt (``executing`` with node None), then
        the images of its history: (prompt id, node id -> PNG bytes, the messages read)."""
        prompt_id = self.queue_prompt(prompt)["prompt_id"]
        messages = read_until_done(ws, prompt_id)
        history = self.get_history(prompt_id)[prompt_id]
        output_images = {}
        for node_id, node_output in history["outputs"].items():
            output_images[node_id] = [self.get_image(i["filename"], i["subfolder"], i["type"])
                                      for i in node_output.get("images", [])]  # fmt: skip
        return prompt_id, output_images, messages


def read_until_done(ws: websocket.WebSocket, prompt_id: str) -> list:
    messages = []
    while True:
        out = ws.recv()
        if isinstance(out, str):
            message = json.loads(out)
            messages.append(message)
            if message["type"] == "executing":
                data = message["data"]
                if data["node"] is None and data["prompt_id"] == prompt_id:
                    return messages
        else:
            messages.append(out)  # a binary preview frame


# -- the gateway, with a LoRA dropped into MODELS_DIR/loras -----------------------------------------------------------
@pytest.fixture(scope="module")
def models_dir(tiny_models_dir, tmp_path_factory) -> Path:
    """The tiny models (linked) and one LoRA file, as a user drops it into MODELS_DIR/loras."""
    import diffusers
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    root = tmp_path_factory.mktemp("comfy-models")
    for d in tiny_models_dir.iterdir():
        (root / d.name).symlink_to(d, target_is_directory=d.is_dir())
    (root / "loras").mkdir()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_models_dir / "tiny-sd")
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v"])
    pipe.unet.add_adapter(config)
    for n, p in pipe.unet.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    diffusers.StableDiffusionPipeline.save_lora_weights(root / "tmp", unet_lora_layers=layers)
    (root / "tmp" / "pytorch_lora_weights.safetensors").rename(root / "loras" / "ink.safetensors")
    return root


@pytest.fixture(scope="module")
def comfy(models_dir, tmp_path_factory):
    with embedded_gateway(tmp_path_factory.mktemp("comfy"), models_dir, API_KEYS=f"acme:{KEY_A},globex:{KEY_B}") as url:
        yield url


def native(url: str, path: str, body: dict, key: str = KEY_A) -> list[np.ndarray]:
    """The images of the /v1 request a workflow means."""
    r = httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}", "Prefer": "wait=60"},
                   timeout=90)  # fmt: skip
    assert r.status_code == 201, r.text
    return [arr(httpx.get(o["url"]).content) for o in r.json()["output"] if o.get("role") != "control_image"]


def arr(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png))).astype(np.int16)


def png_bytes(w: int = 64, h: int = 64, seed: int = 0, mode: str = "RGB") -> bytes:
    shape = {"RGB": (h, w, 3), "RGBA": (h, w, 4), "L": (h, w)}[mode]
    a = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, format="PNG")
    return buf.getvalue()


def small(wf: dict, model: str = "tiny-sd.safetensors", steps: int = 3, size: int = 64) -> dict:
    """A workflow scaled to the tiny models: its checkpoint, fewer steps, a smaller latent."""
    wf = copy.deepcopy(wf)
    for node in wf.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = model
        if node["class_type"] in ("KSampler", "KSamplerAdvanced"):
            inputs["steps"] = steps
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = size
    return wf


SEED_FOLD = 2**32


def digits(wf: dict, steps: int = 4, sampler: str = "euler") -> dict:
    """A txt2img workflow on the bundled engine model: 16x16, and no negative prompt (the engine takes none: a
    negative text is refused by name, never dropped)."""
    wf = small(wf, model="digits", steps=steps, size=16)
    wf["6"]["inputs"]["text"] = "7"  # the prompt names one of the model's labels
    wf["7"]["inputs"]["text"] = ""
    wf["3"]["inputs"]["sampler_name"] = sampler
    return wf


def _job_of(url: str, prompt_id: str) -> dict:
    """The v1 job of a prompt: its id is the prompt id's UUID."""
    job_id = "job_" + uuid.UUID(prompt_id).hex
    return httpx.get(f"{url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY_A}"}).json()


# -- the workflows ---------------------------------------------------------------------------------------------------
def test_default_txt2img_workflow_draws_what_v1_draws_with_comfyuis_messages(comfy):
    client = ComfyClient(comfy)
    ws = client.connect()
    status = json.loads(ws.recv())
    assert status["type"] == "status" and status["data"]["status"]["exec_info"]["queue_remaining"] == 0
    assert status["data"]["sid"] == client.client_id
    wf = small(workflow("txt2img_default"))
    prompt_id, images, messages = client.run(ws, wf)
    ws.close()
    assert list(images) == ["9"] and len(images["9"]) == 1
    got = arr(images["9"][0])
    assert got.shape == (64, 64, 3) and got.std() > 5
    seed = 156680208700286 % SEED_FOLD  # ComfyUI's 64-bit seed, folded into ours (the job records it)
    body = {
        "model": "tiny-sd",
        "prompt": wf["6"]["inputs"]["text"],
        "negative_prompt": "text, watermark",
        "seed": seed,
        "num_inference_steps": 3,
        "guidance_scale": 8.0,
        "scheduler": "euler",
        "width": 64,
        "height": 64,
    }
    assert np.array_equal(got, native(comfy, "/v1/txt2img", body)[0])  # one execution path, pixel for pixel
    # ComfyUI's message sequence
    types = [m["type"] for m in messages if isinstance(m, dict)]
    assert types[0] in ("status", "execution_start")
    assert types.index("execution_start") < types.index("progress") < types.index("executed")
    assert types[-3:] == ["execution_success", "executing", "status"] or types[-2:] == [
        "execution_success",
        "executing",
    ]
    executing = [m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "executing"]
    assert executing == ["4", "6", "7", "5", "3", "8", "9", None]
    progress = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "progress"]
    assert progress[-1] == {"value": 3, "max": 3, "prompt_id": prompt_id, "node": "3"}
    executed = next(m["data"] for m in messages if isinstance(m, dict) and m["type"] == "executed")
    assert executed["node"] == "9" and executed["prompt_id"] == prompt_id
    assert executed["output"]["images"][0]["type"] == "output"
    # the history record, as ComfyUI keeps it
    item = client.get_history(prompt_id)[prompt_id]
    assert item["status"]["status_str"] == "success" and item["status"]["completed"] is True
    number, pid, graph, extra, outputs = item["prompt"]
    assert pid == prompt_id and extra["client_id"] == client.client_id and outputs == ["9"]
    assert graph["3"]["class_type"] == "KSampler" and graph["3"]["inputs"]["seed"] == 156680208700286
    assert prompt_id in client.get_history()
    assert client.get_history(str(uuid.uuid4())) == {}


def test_an_engine_model_through_a_plain_txt2img_graph(comfy):
    """What a newcomer tries first: the bundled digits model, the CLIPTextEncode text as its prompt."""
    client = ComfyClient(comfy)
    wf = digits(workflow("txt2img_default"), steps=10)
    wf["3"]["inputs"]["seed"] = 42
    wf["3"]["inputs"]["cfg"] = 2.0
    with closing(client.connect()) as ws:
        _, images, _ = client.run(ws, wf)
    got = arr(images["9"][0])
    assert got.shape == (16, 16) and got.std() > 20  # a drawn digit
    wf["7"]["inputs"]["text"] = "text, watermark"  # the engine takes no negative prompt: refused by name
    status, refused = client.refusal(wf)
    assert status == 400 and refused["node_errors"]["7"]["errors"][0]["extra_info"]["input_name"] == "text"
    body = {
        "model": "digits",
        "prompt": "7",
        "seed": 42,
        "num_inference_steps": 10,
        "guidance_scale": 2.0,
        "scheduler": "ddim",
        "width": 16,
        "height": 16,
    }
    assert np.array_equal(got, native(comfy, "/v1/txt2img", body)[0])


def test_img2img_workflow_draws_what_v1_img2img_draws(comfy):
    client = ComfyClient(comfy)
    init = png_bytes(64, 64, seed=1)
    up = client.upload_image(init, "example.png")
    assert up["name"].startswith("upl_") and up["type"] == "input"
    assert client.get_image(up["name"], up["subfolder"], "input") == init  # the upload, served back to its owner
    wf = small(workflow("img2img"))
    wf["10"]["inputs"]["image"] = up["name"]
    with closing(client.connect()) as ws:
        _, images, _ = client.run(ws, wf)
    got = arr(images["9"][0])
    body = {"model": "tiny-sd", "prompt": wf["6"]["inputs"]["text"], "negative_prompt": "watermark, text",
            "seed": 280823642470253 % SEED_FOLD, "num_inference_steps": 3, "guidance_scale": 8.0,
            "scheduler": "dpmpp_2m", "image": up["name"].split(".")[0], "strength": 0.87, "width": 64,
            "height": 64}  # fmt: skip
    assert np.array_equal(got, native(comfy, "/v1/img2img", body)[0])
    other = client.upload_image(png_bytes(64, 64, seed=2))
    wf["10"]["inputs"]["image"] = other["name"]
    with closing(client.connect()) as ws:
        _, images2, _ = client.run(ws, wf)
    assert np.abs(arr(images2["9"][0]) - got).mean() > 1  # the input image counts


def test_inpaint_workflow_draws_what_v1_inpaint_draws(comfy):
    """VAEEncodeForInpaint with LoadImage's MASK (the alpha painted in ComfyUI's mask editor: 1 - alpha)."""
    client = ComfyClient(comfy)
    rgb = np.asarray(Image.open(io.BytesIO(png_bytes(64, 64, seed=3))))
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[16:48, 20:44] = 0  # transparent: repainted
    buf = io.BytesIO()
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(buf, format="PNG")
    up = client.upload_image(buf.getvalue(), "yosemite_inpaint_example.png")
    wf = small(workflow("inpaint"), model="tiny-sd-inpaint")
    wf["20"]["inputs"]["image"] = up["name"]
    wf["26"]["inputs"]["grow_mask_by"] = 0
    with closing(client.connect()) as ws:
        prompt_id, images, _ = client.run(ws, wf)
    got = arr(images["9"][0])
    mask = io.BytesIO()
    Image.fromarray(255 - alpha, "L").save(mask, format="PNG")
    body = {"model": "tiny-sd-inpaint", "prompt": wf["6"]["inputs"]["text"], "negative_prompt": "watermark, text",
            "seed": 1040111309094545 % SEED_FOLD, "num_inference_steps": 3, "guidance_scale": 8.0,
            "scheduler": "unipc", "image": up["name"].split(".")[0], "strength": 1.0, "width": 64, "height": 64,
            "mask_image": "data:image/png;base64," + base64.b64encode(mask.getvalue()).decode()}  # fmt: skip
    assert np.array_equal(got, native(comfy, "/v1/inpaint", body)[0])
    job = _job_of(comfy, prompt_id)
    assert job["type"] == "inpaint" and job["input_sha256"]["mask_image"]


def test_grow_mask_by_grows_as_comfyuis_convolution():
    """VAEEncodeForInpaint's grow_mask_by, done with PIL in the gateway, equals ComfyUI's conv2d of ones."""
    import torch

    from api.compat.comfyui.masks import grow

    rng = np.random.default_rng(0)
    m = (rng.random((40, 50)) > 0.93).astype(np.uint8) * 255
    m[0, 0] = m[-1, -1] = 255
    for by in (0, 1, 2, 3, 6, 7, 16, 33, 64):
        got = np.asarray(grow(Image.fromarray(m, "L"), by)) > 127
        t = torch.from_numpy(m / 255.0).float()[None, None].round()
        if by == 0:
            want = t
        else:
            pad = -(-(by - 1) // 2)
            want = torch.clamp(torch.nn.functional.conv2d(t, torch.ones((1, 1, by, by)), padding=pad), 0, 1)
        want = want[0, 0, :40, :50].round().numpy() > 0.5
        assert np.array_equal(got, want), by


def test_lora_workflow_draws_what_v1_draws_with_the_lora(comfy):
    client = ComfyClient(comfy)
    wf = small(workflow("lora"))
    wf["10"]["inputs"].update(lora_name="ink.safetensors", strength_model=0.8, strength_clip=0.8)
    with closing(client.connect()) as ws:
        _, images, _ = client.run(ws, wf)
    got = arr(images["9"][0])
    body = {"model": "tiny-sd", "prompt": "masterpiece best quality girl", "negative_prompt": "bad hands",
            "seed": 851616030078638 % SEED_FOLD, "num_inference_steps": 3, "guidance_scale": 8.0,
            "scheduler": "euler", "width": 64, "height": 64}  # fmt: skip
    assert np.array_equal(got, native(comfy, "/v1/txt2img", {**body, "loras": [{"name": "ink", "scale": 0.8}]})[0])
    assert np.abs(got - native(comfy, "/v1/txt2img", body)[0]).mean() > 1  # the LoRA changes the image


def test_controlnet_canny_workflow_draws_what_v1_controlnet_draws(comfy):
    client = ComfyClient(comfy)
    control = Image.new("RGB", (64, 64), "black")
    control.paste((255, 255, 255), (16, 16, 48, 48))
    buf = io.BytesIO()
    control.save(buf, format="PNG")
    up = client.upload_image(buf.getvalue(), "house.png")
    wf = small(workflow("controlnet_canny"))
    wf["11"]["inputs"]["control_net_name"] = "tiny-controlnet.safetensors"
    wf["12"]["inputs"]["image"] = up["name"]
    with closing(client.connect()) as ws:
        _, images, _ = client.run(ws, wf)
    got = arr(images["9"][0])
    body = {"model": "tiny-sd", "prompt": "a house in the woods", "negative_prompt": "watermark, text",
            "seed": 493542913684232 % SEED_FOLD, "num_inference_steps": 3, "guidance_scale": 8.0,
            "scheduler": "euler", "width": 64, "height": 64, "controlnet": "tiny-controlnet",
            "control_image": up["name"].split(".")[0], "preprocess": "canny", "canny_low_threshold": 102,
            "canny_high_threshold": 204, "controlnet_conditioning_scale": 0.8}  # fmt: skip
    assert np.array_equal(got, native(comfy, "/v1/controlnet", body)[0])
    edges = arr(images["14"][0])  # PreviewImage of the Canny node: the job's detected map
    assert set(np.unique(edges)) <= {0, 255} and edges.max() == 255


# -- progress, previews, interrupt, the queue ------------------------------------------------------------------------
def test_progress_previews_and_interrupt_over_the_websocket(comfy):
    client = ComfyClient(comfy)
    wf = digits(workflow("txt2img_default"), steps=1000, sampler="ddpm")
    wf["5"]["inputs"]["batch_size"] = 8
    ws = client.connect()
    prompt_id = client.queue_prompt(wf)["prompt_id"]
    seen: list = []

    def until(pred):
        while True:
            out = ws.recv()
            msg = json.loads(out) if isinstance(out, str) else out
            seen.append(msg)
            if pred(msg):
                return msg

    p = until(lambda m: isinstance(m, dict) and m["type"] == "progress")
    assert p["data"]["max"] == 1000 and p["data"]["prompt_id"] == prompt_id and p["data"]["node"] == "3"
    frame = until(lambda m: isinstance(m, bytes))
    event, image_type = struct.unpack(">II", frame[:8])
    assert (event, image_type) == (1, 2)  # PREVIEW_IMAGE, PNG
    assert Image.open(io.BytesIO(frame[8:])).size == (16, 16)
    queue = client.get("/queue")
    assert [q[1] for q in queue["queue_running"]] == [prompt_id] and queue["queue_pending"] == []
    assert client.get("/history/" + prompt_id) == {}  # not in the history while it runs
    assert client.post("/interrupt", {"prompt_id": prompt_id}) == 200
    until(lambda m: isinstance(m, dict) and m["type"] == "execution_interrupted")
    end = until(lambda m: isinstance(m, dict) and m["type"] == "executing")
    assert end["data"] == {"node": None, "prompt_id": prompt_id}
    ws.close()
    item = client.get_history(prompt_id)[prompt_id]
    assert item["status"]["status_str"] == "error" and item["outputs"]["9"]["images"] == []
    assert item["status"]["messages"][-1][0] == "execution_interrupted"


def test_queue_delete_cancels_a_pending_prompt(comfy):
    client = ComfyClient(comfy)
    long = digits(workflow("txt2img_default"), steps=1000, sampler="ddpm")
    long["5"]["inputs"]["batch_size"] = 8
    ids = [client.queue_prompt(long)["prompt_id"] for _ in range(3)]
    wait_for(lambda: client.get("/queue")["queue_pending"], 30, what="a pending prompt")
    pending = [q[1] for q in client.get("/queue")["queue_pending"]]
    assert client.post("/queue", {"delete": pending}) == 200
    assert client.get("/prompt")["exec_info"]["queue_remaining"] <= 3 - len(pending)
    for pid in pending:
        assert wait_for(lambda p=pid: client.get_history(p), 30)[pid]["status"]["status_str"] == "error"
    assert client.post("/interrupt", {}) == 200
    wait_for(lambda: all(client.get_history(p) for p in ids), 60, what="every prompt ended")
    assert client.get("/queue") == {"queue_running": [], "queue_pending": []}


def test_a_clients_own_prompt_id_is_kept(comfy):
    client = ComfyClient(comfy)
    own = str(uuid.uuid4())
    wf = digits(workflow("txt2img_default"))
    with closing(client.connect()) as ws:
        answer = client.queue_prompt(wf, prompt_id=own)
        assert answer["prompt_id"] == own and answer["node_errors"] == {} and isinstance(answer["number"], int)
        read_until_done(ws, own)
    assert client.get_history(own)[own]["status"]["status_str"] == "success"
    assert client.queue_prompt(wf, prompt_id=own)["prompt_id"] == own  # the same prompt again: the same job


# -- refusals in ComfyUI's own shape ---------------------------------------------------------------------------------
def test_an_unsupported_node_is_refused_by_name(comfy):
    client = ComfyClient(comfy)
    wf = small(workflow("txt2img_default"))
    wf["10"] = {"inputs": {"model_name": "4x-UltraSharp.pth"}, "class_type": "UpscaleModelLoader"}
    status, body = client.refusal(wf)
    assert status == 400 and body["error"]["type"] == "invalid_prompt"
    assert "UpscaleModelLoader" in body["error"]["message"] and "#10" in body["error"]["details"]
    assert body["node_errors"]["10"]["class_type"] == "UpscaleModelLoader"
    long_ids = small(workflow("txt2img_default"))
    long_ids["9" * 40] = long_ids.pop("9")  # an id past 32 characters is refused, never cut to a prefix
    status, body = client.refusal(long_ids)
    assert status == 400 and body["error"]["message"] == "Node id too long"


@pytest.mark.parametrize(
    ("change", "node", "input_name"),
    [
        (
            lambda wf: wf["3"].update(
                class_type="KSamplerAdvanced",
                inputs={
                    **{k: v for k, v in wf["3"]["inputs"].items() if k not in ("seed", "denoise")},
                    "noise_seed": 1,
                    "add_noise": "enable",
                    "start_at_step": 2,
                    "end_at_step": 10000,
                    "return_with_leftover_noise": "disable",
                },
            ),
            "3",
            "start_at_step",
        ),  # a step window: not expressible
        (lambda wf: wf["3"]["inputs"].update(sampler_name="dpmpp_sde"), "3", "sampler_name"),
        (lambda wf: wf["3"]["inputs"].update(scheduler="exponential"), "3", "scheduler"),
        (lambda wf: wf["3"]["inputs"].update(denoise=0.5), "3", "denoise"),  # partial denoise of an empty latent
        (lambda wf: wf["4"]["inputs"].update(ckpt_name="nope.safetensors"), "4", "ckpt_name"),
        (lambda wf: wf["5"]["inputs"].update(width=4096), "5", "width"),
        (lambda wf: wf["5"]["inputs"].update(width=60), "5", "width"),  # admission: not a size tiny-sd draws
        (lambda wf: wf["6"]["inputs"].pop("clip"), "6", "clip"),
        (
            lambda wf: wf.update(
                {
                    "10": {"class_type": "KSampler", "inputs": {**wf["3"]["inputs"]}},
                    "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["4", 2]}},
                    "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
                }
            ),
            "10",
            "samples",
        ),  # a second sampler
    ],
)
def test_what_cannot_be_served_exactly_is_a_400_naming_the_node(comfy, change, node, input_name):
    client = ComfyClient(comfy)
    wf = small(workflow("txt2img_default"))
    change(wf)
    status, body = client.refusal(wf)
    assert status == 400, body
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    err = body["node_errors"][node]
    assert err["class_type"] == wf[node]["class_type"] and err["dependent_outputs"] in ([], ["9"], ["9", "12"])
    assert set(err["errors"][0]) == {"type", "message", "details", "extra_info"}
    assert err["errors"][0]["extra_info"].get("input_name") == input_name, body
    if input_name == "ckpt_name":  # as ComfyUI's answer: the names it could have been
        assert "tiny-sd" in err["errors"][0]["details"] and "digits" in err["errors"][0]["details"]


def test_controlnet_for_part_of_the_steps_and_a_unet_only_lora_are_refused(comfy):
    client = ComfyClient(comfy)
    wf = small(workflow("controlnet_canny"))
    wf["11"]["inputs"]["control_net_name"] = "tiny-controlnet"
    wf["12"]["inputs"]["image"] = "upl_" + "0" * 32 + ".png"
    wf["10"]["inputs"]["end_percent"] = 0.5
    status, body = client.refusal(wf)
    assert status == 400 and body["node_errors"]["10"]["errors"][0]["extra_info"]["input_name"] == "end_percent"
    wf = small(workflow("lora"))
    wf["10"]["inputs"]["lora_name"] = "ink"
    wf["6"]["inputs"]["clip"] = ["4", 1]  # the text encoder without the LoRA
    status, body = client.refusal(wf)
    assert status == 400 and "6" in body["node_errors"]
    r = httpx.post(f"{comfy}/prompt", json={"client_id": "x"}, headers=client.headers)
    assert r.status_code == 400 and r.json() == {"error": "no prompt", "node_errors": []}


# -- what clients read, and isolation --------------------------------------------------------------------------------
def test_object_info_lists_what_is_served(comfy):
    client = ComfyClient(comfy)
    info = client.get("/object_info")
    assert {"KSampler", "CheckpointLoaderSimple", "LoraLoader", "ControlNetApplyAdvanced", "Canny"} <= set(info)
    assert "tiny-sd" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert "ink" in info["LoraLoader"]["input"]["required"]["lora_name"][0]
    assert "tiny-controlnet" in info["ControlNetLoader"]["input"]["required"]["control_net_name"][0]
    samplers = info["KSampler"]["input"]["required"]["sampler_name"][0]
    assert {"euler", "euler_ancestral", "dpmpp_2m", "uni_pc"} <= set(samplers)
    assert info["SaveImage"]["output_node"] is True and info["KSampler"]["output"] == ["LATENT"]
    assert list(client.get("/object_info/KSampler")) == ["KSampler"]
    assert client.get("/object_info/UpscaleModelLoader") == {}
    stats = client.get("/system_stats")
    assert {"system", "devices"} <= set(stats) and "python_version" in stats["system"]
    assert client.get("/api/queue") == client.get("/queue")  # ComfyUI's /api prefix


def test_history_and_view_belong_to_their_tenant(comfy):
    a, b = ComfyClient(comfy), ComfyClient(comfy, key=KEY_B)
    wf = digits(workflow("txt2img_default"))
    with closing(a.connect()) as ws:
        prompt_id, images, _ = a.run(ws, wf)
    image = a.get_history(prompt_id)[prompt_id]["outputs"]["9"]["images"][0]
    assert a.get_image(image["filename"], "", "output") == images["9"][0]
    assert b.get_history(prompt_id) == {} and prompt_id not in b.get_history()
    with pytest.raises(urllib.error.HTTPError) as e:
        b.get_image(image["filename"], "", "output")
    assert e.value.code == 404
    up = a.upload_image(png_bytes(16, 16))
    with pytest.raises(urllib.error.HTTPError) as e:
        b.get_image(up["name"], "", "input")
    assert e.value.code == 404
    wf_b = small(workflow("img2img"))
    wf_b["10"]["inputs"]["image"] = up["name"]  # another tenant's upload: unknown to b
    status, body = b.refusal(wf_b)
    assert status == 400 and "10" in body["node_errors"]
    with pytest.raises(urllib.error.HTTPError) as e:
        ComfyClient(comfy, key="wrong").get("/queue")
    assert e.value.code == 401
    with pytest.raises(websocket.WebSocketException):
        ComfyClient(comfy, key="wrong").connect()


def test_a_late_socket_hears_the_end_of_a_prompt_that_ran_before_it_connected(comfy):
    client = ComfyClient(comfy)
    wf = digits(workflow("txt2img_default"))
    prompt_id = client.queue_prompt(wf)["prompt_id"]
    wait_for(lambda: client.get_history(prompt_id), 60, what="the prompt ended")
    with closing(client.connect()) as ws:
        messages = read_until_done(ws, prompt_id)
    assert any(isinstance(m, dict) and m["type"] == "executed" for m in messages)


def test_the_mask_editors_upload_feeds_an_inpaint_prompt(comfy):
    """``/upload/mask`` (ComfyUI's mask editor): the original with the painted alpha, a new upload whose MASK output
    (1 - alpha) is what the inpaint job repaints."""
    client = ComfyClient(comfy)
    original = client.upload_image(png_bytes(64, 64, seed=5))
    painted = np.zeros((64, 64, 4), np.uint8)
    painted[..., 3] = 255
    painted[8:40, 8:40, 3] = 0  # erased in the editor: repainted
    buf = io.BytesIO()
    Image.fromarray(painted, "RGBA").save(buf, format="PNG")
    ref = json.dumps({"filename": original["name"], "subfolder": "", "type": "input"})
    r = httpx.post(f"{comfy}/upload/mask", headers=client.headers, files={"image": ("clipspace.png", buf.getvalue())},
                   data={"original_ref": ref, "type": "input", "subfolder": "clipspace"})  # fmt: skip
    assert r.status_code == 200, r.text
    masked = r.json()
    assert masked["name"] != original["name"] and masked["subfolder"] == "clipspace"
    saved = Image.open(io.BytesIO(client.get_image(masked["name"], "clipspace", "input")))
    assert np.array_equal(np.asarray(saved)[..., 3], painted[..., 3])
    assert np.array_equal(np.asarray(saved)[..., :3], arr(client.get_image(original["name"], "", "input")))
    wf = small(workflow("inpaint"), model="tiny-sd-inpaint")
    wf["20"]["inputs"]["image"] = f"clipspace/{masked['name']} [input]"  # as the editor sets the LoadImage
    with closing(client.connect()) as ws:
        prompt_id, images, _ = client.run(ws, wf)
    assert arr(images["9"][0]).shape == (64, 64, 3)
    job = _job_of(comfy, prompt_id)
    assert job["type"] == "inpaint" and job["input"]["strength"] == 1.0


def test_extra_data_asks_for_what_comfyui_lacks(comfy):
    """A webhook and a priority ride in ``extra_data``; a bad one is refused in ComfyUI's shape, not dropped."""
    client = ComfyClient(comfy)
    wf = digits(workflow("txt2img_default"))
    body = {"prompt": wf, "client_id": client.client_id, "extra_data": {"webhook": "http://127.0.0.1:9/hook"}}
    r = httpx.post(f"{comfy}/prompt", json=body, headers=client.headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_extra_data", r.text  # a private address
    body["extra_data"] = {"priority": "low", "extra_pnginfo": {"workflow": {"nodes": []}}}
    r = httpx.post(f"{comfy}/prompt", json=body, headers=client.headers)
    assert r.status_code == 200, r.text
    assert _job_of(comfy, r.json()["prompt_id"])["input"]["priority"] == "low"


def test_a_socket_hears_its_own_tenants_prompts_only(comfy):
    """Another tenant's socket with the same clientId hears nothing of this tenant's prompts."""
    a = ComfyClient(comfy)
    b = ComfyClient(comfy, key=KEY_B, client_id=a.client_id)
    wf = digits(workflow("txt2img_default"))
    with closing(b.connect()) as wsb:
        with closing(a.connect()) as wsa:
            theirs, _, _ = a.run(wsa, wf)
        mine = b.queue_prompt(wf)["prompt_id"]
        messages = read_until_done(wsb, mine)  # a's prompt ran first: its messages would have come before
    ids = {m["data"].get("prompt_id") for m in messages if isinstance(m, dict)}
    assert mine in ids and theirs not in ids


def test_a_socket_from_another_site_or_a_rebound_host_is_refused(comfy):
    """The websocket's handshake passes the browser guard as a state-changing request does: a page on another site
    (its Origin, or the browser's Sec-Fetch-Site) and a rebound Host name are refused before the socket opens (so
    they neither read a tenant's progress nor hold its open waits); the service's own page and a plain client open."""
    client = ComfyClient(comfy)
    url = f"ws://{client.host}/ws?clientId={client.client_id}"
    auth = f"Authorization: Bearer {client.key}"
    for header, kwargs in (
        ([auth], {"origin": "https://evil.example"}),
        ([auth, "Sec-Fetch-Site: cross-site"], {"origin": f"http://{client.host}"}),
        ([auth], {"host": "evil.rebind.example"}),
    ):
        ws = websocket.WebSocket()
        with pytest.raises(websocket.WebSocketBadStatusException) as e:
            ws.connect(url, header=header, **kwargs)
        assert e.value.status_code == 403
    for kwargs in ({"origin": f"http://{client.host}"}, {"suppress_origin": True}):
        ws = websocket.WebSocket()
        ws.connect(url, header=[auth, "Sec-Fetch-Site: same-origin"] if "origin" in kwargs else [auth], **kwargs)
        ws.settimeout(30)
        assert json.loads(ws.recv())["type"] == "status"  # opened: ComfyUI's first message
        ws.close()


def test_a_non_finite_number_and_a_zip_as_a_mask_are_refused_not_crashed_on(comfy):
    """NaN in a node's number (Python's JSON parser reads it) is ComfyUI's invalid-input 400 naming the node; a zip
    sent to the mask editor's upload (or named as its original) is a 422, not a 500."""
    client = ComfyClient(comfy)
    wf = digits(workflow("txt2img_default"))
    wf["3"]["inputs"]["cfg"] = float("nan")
    body = json.dumps({"prompt": wf})  # Python writes NaN, as a hostile client may
    assert "NaN" in body
    r = httpx.post(f"{comfy}/prompt", headers={**client.headers, "Content-Type": "application/json"}, content=body)
    assert r.status_code == 400 and r.json()["node_errors"]["3"]["errors"][0]["type"] == "invalid_input_type", r.text
    original = client.upload_image(png_bytes(16, 16, seed=1))
    ref = json.dumps({"filename": original["name"], "subfolder": "", "type": "input"})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "not an image")
    r = httpx.post(f"{comfy}/upload/mask", headers=client.headers, files={"image": ("mask.zip", buf.getvalue())},
                   data={"original_ref": ref})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_image", r.text


def test_a_socket_open_before_the_prompt_hears_every_step(comfy):
    """A client that connects and then queues (websockets_api_example's order) hears execution_start and a progress
    message for each step, 1 to N: the prompt it posted here pokes its socket, and nothing is folded for it."""
    client = ComfyClient(comfy)
    wf = digits(workflow("txt2img_default"), steps=12)
    with closing(client.connect()) as ws:
        client.run(ws, wf)  # the model warm: the prompt below ends well within the discovery tick
    with closing(client.connect()) as ws:
        assert json.loads(ws.recv())["type"] == "status"
        prompt_id, _, messages = client.run(ws, wf)
    mine = [m for m in messages if isinstance(m, dict) and m["data"].get("prompt_id") == prompt_id]
    assert [m["type"] for m in mine][0] == "execution_start"
    assert [m["data"]["value"] for m in mine if m["type"] == "progress"] == list(range(1, 13))
