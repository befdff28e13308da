"""Every diffusers task type through the API (embedded mode) on tiny pipelines loaded with from_pretrained."""

import io

import imageio_ffmpeg
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.config import Settings
from core.catalog import SCHEDULERS
from serve import create_app
from tests.api.helpers import data_uri, wait_job


@pytest.fixture(scope="module")
def client(tiny_models_dir, tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("pdata"),
        models_dir=tiny_models_dir,
        warm_models="",
        torch_threads=1,
        rate_limit_per_minute=100_000,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def run(client, path, body, status="succeeded"):
    r = client.post(path, json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == status, job
    return job


def fetch(client, item) -> bytes:
    r = client.get(item["url"])
    assert r.status_code == 200 and r.headers["content-type"] == item["content_type"]
    return r.content


def rgb(w=64, h=64, seed=0) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def mask(w=64, h=64) -> bytes:
    a = np.zeros((h, w), dtype=np.uint8)
    a[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_models_list_pipelines_and_controlnets(client):
    models = {m["id"]: m for m in client.get("/v1/models").json()}
    assert models["tiny-sd"]["kind"] == "diffusers" and models["tiny-sd"]["width"] == 64
    assert models["tiny-wan"]["tasks"] == ["video"]
    assert models["tiny-controlnet"]["kind"] == "controlnet"


def pixels(client, item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(fetch(client, item))).convert("RGB")).astype(int)


def txt2img_pixels(client, **body) -> np.ndarray:
    job = run(client, "/v1/txt2img", {"model": "tiny-sd", "prompt": "a photo of a cat", "seed": 1, **body})
    return pixels(client, job["output"][0])


def test_every_scheduler_name_builds_its_scheduler(tiny_models_dir):
    """Each name gives the diffusers class and options it stands for, built from the model's own config."""
    import diffusers

    from core.pipelines.loader import make_scheduler

    base = diffusers.PNDMScheduler.from_pretrained(tiny_models_dir / "tiny-sd" / "scheduler")
    assert type(make_scheduler("default", base, flow=False)) is type(base)
    for name, (cls, extra) in SCHEDULERS.items():
        sched = make_scheduler(name, base, flow=False)
        assert type(sched).__name__ == cls, name
        assert all(sched.config[k] == v for k, v in extra.items()), name
        assert sched.config["beta_schedule"] == base.config["beta_schedule"]  # the model's own training schedule


def test_schedulers_change_the_output(client):
    """The scheduler a request names is the one that runs: the model's default equals its own class by name; an
    ancestral sampler, a deterministic one and one on Karras sigmas give clearly different images."""
    out = {
        name: txt2img_pixels(client, scheduler=name, num_inference_steps=5)
        for name in ("default", "pndm", "ddim", "ddpm", "dpmpp_2m_karras")
    }
    assert np.array_equal(out["default"], out["pndm"])  # tiny-sd's own scheduler is PNDM
    for a, b in (("ddim", "ddpm"), ("ddim", "dpmpp_2m_karras"), ("ddpm", "dpmpp_2m_karras"), ("pndm", "ddpm")):
        assert np.abs(out[a] - out[b]).max() >= 20, (a, b)


def test_txt2img_expected_slice(client):
    """A regression pin: a few pixel values at a fixed seed (a silent numeric change fails here)."""
    got = txt2img_pixels(client, scheduler="ddim", num_inference_steps=2)[30:33, 30:33, 0]
    expected = np.array([[81, 148, 106], [120, 124, 78], [147, 143, 61]])
    assert np.abs(got - expected).max() <= 2, got.tolist()


def test_seeds_reproduce_and_image_i_is_seed_plus_i(client):
    body = {"model": "tiny-sd", "prompt": "a red house", "negative_prompt": "dark", "num_images": 2, "seed": 10}
    a = run(client, "/v1/txt2img", body)
    b = run(client, "/v1/txt2img", body)
    c = run(client, "/v1/txt2img", {**body, "num_images": 1, "seed": 11})
    assert fetch(client, a["output"][0]) == fetch(client, b["output"][0])  # the same request: the same bytes
    # image 1 of a two-image job is seed 11's image: equal to seed 11 drawn alone up to float rounding (a batch of
    # two and a batch of one take different GEMM blockings on some CPUs), at most one level in a pixel
    pair, alone = (
        np.asarray(Image.open(io.BytesIO(fetch(client, x)))).astype(int) for x in (a["output"][1], c["output"][0])
    )
    assert np.abs(pair - alone).max() <= 1, np.abs(pair - alone).max()
    assert fetch(client, a["output"][0]) != fetch(client, a["output"][1])
    assert b["metrics"]["load_ms"] == 0  # warm


def test_img2img_inpaint_and_true_inpainting_model(client):
    img = data_uri(rgb(48, 32))
    job = run(client, "/v1/img2img", {"model": "tiny-sd", "prompt": "a tree", "image": img, "strength": 0.6, "seed": 2})
    assert Image.open(io.BytesIO(fetch(client, job["output"][0]))).size == (48, 32)  # the input image's size
    body = {"prompt": "a dog", "image": data_uri(rgb()), "mask_image": data_uri(mask()), "seed": 3}
    for model in ("tiny-sd", "tiny-sd-inpaint"):
        job = run(client, "/v1/inpaint", {**body, "model": model})
        assert Image.open(io.BytesIO(fetch(client, job["output"][0]))).size == (64, 64)


def test_img2img_output_depends_on_the_input_image_and_strength(client):
    def img2img(seed_of_input: int, strength: float) -> np.ndarray:
        body = {
            "model": "tiny-sd",
            "prompt": "a tree",
            "image": data_uri(rgb(64, 64, seed_of_input)),
            "strength": strength,
            "seed": 2,
        }
        return pixels(client, run(client, "/v1/img2img", body)["output"][0])

    a, b = img2img(0, 0.6), img2img(1, 0.6)
    assert np.abs(a - b).mean() > 2  # same seed and prompt, another image: another output
    assert np.abs(img2img(0, 0.3) - a).mean() > 1  # another strength: another output


def test_inpaint_output_depends_on_the_mask(client):
    def inpaint(m: bytes) -> np.ndarray:
        body = {"model": "tiny-sd", "prompt": "a dog", "image": data_uri(rgb()), "mask_image": data_uri(m), "seed": 3}
        return pixels(client, run(client, "/v1/inpaint", body)["output"][0])

    full = np.full((64, 64), 255, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(full).save(buf, format="PNG")
    assert np.abs(inpaint(mask()) - inpaint(buf.getvalue())).mean() > 1


def test_inpaint_with_uploaded_images(client):
    up = client.post("/v1/uploads", files={"file": ("i.png", rgb(), "image/png")}).json()["id"]
    mk = client.post("/v1/uploads", files={"file": ("m.png", mask(), "image/png")}).json()["id"]
    job = run(client, "/v1/inpaint", {"model": "tiny-sd", "prompt": "sky", "image": up, "mask_image": mk, "seed": 4})
    assert len(job["output"]) == 1


def test_controlnet_canny_returns_the_control_image(client):
    job = run(
        client,
        "/v1/controlnet",
        {
            "model": "tiny-sd",
            "controlnet": "tiny-controlnet",
            "prompt": "a house",
            "control_image": data_uri(rgb()),
            "preprocess": "canny",
            "seed": 5,
            "controlnet_conditioning_scale": 0.8,
        },
    )
    roles = [o.get("role") for o in job["output"]]
    assert roles == [None, "control_image"]
    edges = np.asarray(Image.open(io.BytesIO(fetch(client, job["output"][1]))))
    assert set(np.unique(edges)) <= {0, 255}  # canny edges
    plain = run(
        client,
        "/v1/controlnet",
        {
            "model": "tiny-sd",
            "controlnet": "tiny-controlnet",
            "prompt": "a house",
            "control_image": data_uri(rgb()),
            "preprocess": "none",
            "seed": 5,
        },
    )
    assert fetch(client, plain["output"][1]) != fetch(client, job["output"][1])


def test_controlnet_depth_returns_the_depth_models_map(client, tiny_models_dir):
    """``preprocess: depth``: the control image is the depth model's map (found in MODELS_DIR, kept warm), as the
    edge map is for canny; it equals the model run directly on the same image."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    body = {"model": "tiny-sd", "controlnet": "tiny-controlnet", "prompt": "a house", "seed": 5}
    job = run(client, "/v1/controlnet", {**body, "control_image": data_uri(rgb(seed=3)), "preprocess": "depth"})
    assert [o.get("role") for o in job["output"]] == [None, "control_image"]
    shown = np.asarray(Image.open(io.BytesIO(fetch(client, job["output"][1])))).astype(float)
    assert shown.shape == (64, 64, 3) and shown.min() == 0 and shown.max() == 255  # normalised to the full range
    # what the depth model says of the same image
    model = AutoModelForDepthEstimation.from_pretrained(tiny_models_dir / "tiny-depth").eval()
    processor = AutoImageProcessor.from_pretrained(tiny_models_dir / "tiny-depth")
    image = Image.open(io.BytesIO(rgb(seed=3))).convert("RGB")
    with torch.no_grad():
        d = model(**processor(images=image, return_tensors="pt")).predicted_depth[:, None]
    d = torch.nn.functional.interpolate(d, size=(64, 64), mode="bicubic", align_corners=False)[0, 0]
    expected = ((d - d.min()) / (d.max() - d.min()) * 255).round().numpy()
    assert np.abs(shown[..., 0] - expected).max() <= 1
    canny = run(client, "/v1/controlnet", {**body, "control_image": data_uri(rgb(seed=3)), "preprocess": "canny"})
    assert fetch(client, canny["output"][1]) != fetch(client, job["output"][1])


def test_depth_without_a_depth_model_is_a_422_naming_preprocess(tmp_path):
    from tests.fixtures.tiny import build_tiny_models

    build_tiny_models(tmp_path / "models", ("tiny-sd", "tiny-controlnet"))
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", rate_limit_per_minute=10_000)
    with TestClient(create_app(settings)) as c:
        r = c.post(
            "/v1/controlnet",
            json={"model": "tiny-sd", "controlnet": "tiny-controlnet", "prompt": "x", "control_image": data_uri(rgb()),
                  "preprocess": "depth"},
        )  # fmt: skip
        assert r.status_code == 422 and r.json()["error"]["field"] == "preprocess", r.text
        assert r.json()["error"]["code"] == "unknown_preprocessor"


def test_sdxl_txt2img(client):
    job = run(client, "/v1/txt2img", {"model": "tiny-sdxl", "prompt": "a portrait", "seed": 6, "scheduler": "euler_a"})
    assert Image.open(io.BytesIO(fetch(client, job["output"][0]))).size == (64, 64)


def test_video_mp4_and_poster(client, tmp_path):
    job = run(
        client, "/v1/video", {"model": "tiny-wan", "prompt": "a monkey dance", "num_frames": 5, "fps": 4, "seed": 7}
    )
    mp4, poster = job["output"]
    assert mp4["content_type"] == "video/mp4" and mp4["num_frames"] == 5 and poster["role"] == "poster"
    data = fetch(client, mp4)
    assert data[4:8] == b"ftyp"
    (tmp_path / "v.mp4").write_bytes(data)
    gen = imageio_ffmpeg.read_frames(str(tmp_path / "v.mp4"))
    meta = next(gen)
    frames = list(gen)
    assert len(frames) == 5 and tuple(meta["size"]) == (32, 32)
    assert Image.open(io.BytesIO(fetch(client, poster))).size == (32, 32)


def test_progress_events_per_step(client):
    job = run(
        client,
        "/v1/txt2img",
        {"model": "tiny-sd", "prompt": "a cat", "num_inference_steps": 3, "seed": 8, "scheduler": "ddim"},
    )
    text = client.get(f"/v1/jobs/{job['id']}/events").text
    assert text.count("event: progress") == 3 and job["progress"] == {"step": 3, "total": 3}


@pytest.mark.parametrize(
    "path,body,field",
    [
        ("/v1/inpaint", {"model": "tiny-sd", "prompt": "x", "image": "RGB64", "mask_image": "MASK32"}, "mask_image"),
        ("/v1/img2img", {"model": "tiny-sd", "prompt": "x", "image": data_uri(b"GIF89a-not-really")}, "image"),
        (
            "/v1/controlnet",
            {"model": "tiny-sd", "controlnet": "nope", "prompt": "x", "control_image": "RGB64"},
            "controlnet",
        ),
        ("/v1/txt2img", {"model": "tiny-wan", "prompt": "x"}, "model"),
        ("/v1/txt2img", {"model": "tiny-sd-inpaint", "prompt": "x"}, "model"),
        ("/v1/video", {"model": "tiny-sd", "prompt": "x"}, "model"),
        ("/v1/video", {"model": "tiny-wan", "prompt": "x", "num_frames": 6}, "num_frames"),
        ("/v1/video", {"model": "tiny-wan", "prompt": "x", "num_frames": 999}, "num_frames"),
        ("/v1/txt2img", {"model": "tiny-sd", "prompt": "x", "width": 60}, "width"),
        ("/v1/txt2img", {"model": "tiny-wan", "prompt": "x", "scheduler": "dpmpp_2m"}, "model"),
        ("/v1/video", {"model": "tiny-wan", "prompt": "x", "scheduler": "dpmpp_2m"}, "scheduler"),
        ("/v1/txt2img", {"model": "tiny-sd", "prompt": "x", "num_inference_steps": 1000}, "num_inference_steps"),
    ],
)
def test_bad_pipeline_inputs(client, path, body, field):
    subs = {"RGB64": data_uri(rgb()), "MASK32": data_uri(mask(32, 32))}
    body = {k: subs.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_cancel_running_diffusers_job_stops_at_next_step(client):
    r = client.post(
        "/v1/txt2img",
        json={
            "model": "tiny-sd",
            "prompt": "a cat",
            "num_inference_steps": 500,
            "scheduler": "ddim",
            "num_images": 4,
            "seed": 9,
        },
    ).json()
    from tests.conftest import wait_for

    wait_for(lambda: client.get(f"/v1/jobs/{r['id']}").json()["progress"]["step"] >= 2, 60, what="running")
    client.post(f"/v1/jobs/{r['id']}/cancel")
    done = client.get(f"/v1/jobs/{r['id']}?wait=60").json()
    assert done["status"] == "canceled" and done["progress"]["step"] < 500 and done["output"] == []


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
@pytest.mark.parametrize("scheduler", ["default", "euler", "unipc"])
def test_flow_transformer_models_txt2img(client, model, scheduler):
    job = run(client, "/v1/txt2img", {"model": model, "prompt": "a cat", "seed": 1, "scheduler": scheduler})
    assert Image.open(io.BytesIO(fetch(client, job["output"][0]))).size == (32, 32)


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_flow_transformer_models_img2img_and_inpaint(client, model):
    job = run(client, "/v1/img2img", {"model": model, "prompt": "a dog", "image": data_uri(rgb(32, 32)), "seed": 2})
    assert Image.open(io.BytesIO(fetch(client, job["output"][0]))).size == (32, 32)
    job = run(
        client,
        "/v1/inpaint",
        {
            "model": model,
            "prompt": "a dog",
            "image": data_uri(rgb(32, 32)),
            "mask_image": data_uri(mask(32, 32)),
            "seed": 3,
        },
    )
    assert Image.open(io.BytesIO(fetch(client, job["output"][0]))).size == (32, 32)


def test_inline_image_becomes_an_upload_and_job_reads_stay_small(client):
    """A 5 MB data: image is saved as an upload at submit: the record holds its id and sha256, never the bytes, so a
    job read stays small; the job still uses the image."""
    import hashlib
    import json

    raw = np.random.default_rng(1).integers(0, 255, (1300, 1300, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(raw).save(buf, format="PNG", compress_level=0)
    png = buf.getvalue()
    assert len(png) > 4.5 * 2**20
    big = Settings(
        data_dir=client.app.state.backends.settings.data_dir,
        models_dir=client.app.state.backends.settings.models_dir,
        warm_models="",
        torch_threads=1,
        max_body_bytes=8 * 2**20,
        max_image_pixels=2048 * 2048,
    )
    with TestClient(create_app(big)) as c:
        r = c.post(
            "/v1/img2img",
            json={
                "model": "tiny-sd",
                "prompt": "x",
                "image": data_uri(png),
                "width": 64,
                "height": 64,
                "num_inference_steps": 2,
                "seed": 0,
            },
        )
        assert r.status_code == 202, r.text[:300]
        job = wait_job(c, r.json()["id"])
        assert job["status"] == "succeeded", job
        read = c.get(f"/v1/jobs/{job['id']}")
        assert len(read.content) < 4096, len(read.content)
        assert (
            job["input"]["image"].startswith("upl_") and job["input_sha256"]["image"] == hashlib.sha256(png).hexdigest()
        )
        listed = c.get("/v1/jobs?limit=100")
        assert len(listed.content) < 100 * 4096
        print(f"\njob read after a {len(png) / 2**20:.1f} MB inline image: {len(read.content)} bytes")
        assert json.loads(read.content)["output"][0]["width"] == 64


@pytest.mark.parametrize(
    "path,body,output,window,expected",
    [
        (
            "/v1/controlnet",
            {
                "model": "tiny-sd",
                "controlnet": "tiny-controlnet",
                "prompt": "a house",
                "control_image": data_uri(rgb()),
                "preprocess": "canny",
                "seed": 5,
            },
            0,
            (slice(30, 33), slice(30, 33)),
            [[169, 170, 157], [155, 165, 166], [159, 173, 170]],
        ),
        (  # CogVideoX's poster: tiny Wan's decoder draws a flat grey frame, which pins nothing
            "/v1/video",
            {"model": "tiny-cogvideox", "prompt": "a monkey dance", "num_frames": 9, "fps": 4, "seed": 7},
            1,
            (slice(6, 9), slice(6, 9)),
            [[207, 188, 159], [236, 216, 147], [255, 182, 255]],
        ),
    ],
    ids=["controlnet", "video-poster"],
)
def test_expected_slices(client, path, body, output, window, expected):
    """Regression pins at a fixed seed: a silent numeric change in a pipeline fails here."""
    image = pixels(client, run(client, path, body)["output"][output])
    assert image.std() > 3, "a flat image pins nothing"
    got = image[window[0], window[1], 0]
    assert np.abs(got - np.array(expected)).max() <= 2, got.tolist()


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-flux", "tiny-sd3"])
def test_other_families_draw_from_the_seed(client, model):
    """Not only the size: the same seed draws the same pixels, another seed other pixels."""

    def draw(seed: int) -> np.ndarray:
        return pixels(
            client, run(client, "/v1/txt2img", {"model": model, "prompt": "a cat", "seed": seed})["output"][0]
        )

    a = draw(1)
    assert np.array_equal(a, draw(1)) and np.abs(a - draw(2)).mean() > 1


def test_cogvideox_video(client, tmp_path):
    """The CogVideoX family runs end to end (8k+1 frames), and its frame rule is enforced at submit."""
    job = run(client, "/v1/video", {"model": "tiny-cogvideox", "prompt": "a cat", "seed": 1})
    mp4, poster = job["output"]
    assert mp4["num_frames"] == 9 and poster["role"] == "poster"
    (tmp_path / "c.mp4").write_bytes(fetch(client, mp4))
    gen = imageio_ffmpeg.read_frames(str(tmp_path / "c.mp4"))
    meta = next(gen)
    assert len(list(gen)) == 9 and tuple(meta["size"]) == (16, 16)
    r = client.post("/v1/video", json={"model": "tiny-cogvideox", "prompt": "a cat", "num_frames": 10})
    assert r.status_code == 422 and r.json()["error"]["field"] == "num_frames"
