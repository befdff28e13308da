"""Model folders as AUTOMATIC1111 and ComfyUI users have them: single-file checkpoints, kohya LoRAs and single-file
ControlNets (written from the tiny diffusers models by the tests' own key mapping, tests/fixtures/single_file.py),
scanned from their headers and drawn through the service, pixel for pixel as the same weights in diffusers' format."""

from __future__ import annotations

import hashlib
import io
import logging
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.registry import HashCache, ModelRegistry, detect_family, read_safetensors_header
from tests.api.helpers import wait_job
from tests.fixtures.single_file import LAYOUTS, build_user_folders


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def folders(request, tiny_models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"models-{request.param}")
    files = build_user_folders(tiny_models_dir, root, request.param)
    return request.param, root, files


@pytest.fixture(scope="module")
def client(folders, tmp_path_factory):
    from api.config import Settings
    from serve import create_app

    _, root, _ = folders
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("sfdata"),
        models_dir=root,
        warm_models="",
        torch_threads=1,
        rate_limit_per_minute=100_000,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def draw(client, path: str, body: dict) -> np.ndarray:
    r = client.post(
        path, json={"prompt": "a photo of a cat", "seed": 7, "num_inference_steps": 3, "guidance_scale": 6.0, **body}
    )
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job.get("error")
    return np.asarray(Image.open(io.BytesIO(client.get(job["output"][0]["url"]).content))).astype(np.int16)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the scan (torch-free) ------------------------------------------------------------------------------------------
def test_scan_serves_the_files_by_stem_with_their_family_and_sha256(folders, caplog):
    layout, root, files = folders
    with caplog.at_level(logging.WARNING, logger="diffuserve.registry"):
        reg = ModelRegistry([root])
    by_id = {e.id: e for e in reg.list()}
    entry = by_id["sd15-tiny"]
    assert entry.pipeline_class == "StableDiffusionPipeline" and entry.single_file.family == "sd1"
    assert entry.tasks == ["txt2img", "img2img", "inpaint", "controlnet"] and (entry.width, entry.height) == (64, 64)
    assert entry.version == sha256(files["checkpoint"]) and entry.short_hash == sha256(files["checkpoint"])[:10]
    assert entry.info().sha256 == entry.version
    styled = by_id["sd15-styled"]  # a sub-folder: served under the stem, titled by its path (A1111's name)
    assert styled.single_file.rel == "styles/sd15-styled.safetensors" and styled.version == sha256(files["styled"])
    assert "legacy" not in by_id  # .ckpt: never unpickled
    assert any("legacy.ckpt" in r.message and "pickled" in r.message for r in caplog.records)
    assert {"ink-kohya", "ink-peft"} <= set(reg.lora_names())
    assert reg.lora("ink-kohya") == files["kohya"]
    # the single-file ControlNet, with what it conditions (its cross-attention width, no SDXL embeddings)
    assert set(reg.controlnet_names()) == {"canny-tiny", "tiny-controlnet"}
    assert reg.controlnet_file("canny-tiny").path == files["controlnet"]
    assert reg.controlnets_for(entry) == ["canny-tiny", "tiny-controlnet"]
    assert set(reg.base_models_of("canny-tiny")) == {"sd15-tiny", "sd15-styled", "tiny-sd"}
    assert reg.controlnet("canny-tiny", entry) == str(files["controlnet"])


def test_family_by_keys_agrees_with_diffusers(folders, tmp_path):
    from core.pipelines.single_file import diffusers_model_type

    _, _, files = folders
    header = read_safetensors_header(files["checkpoint"])
    assert detect_family(header) == ("sd1", None)
    assert detect_family(read_safetensors_header(files["sdxl"])) == ("sdxl", None)
    assert diffusers_model_type(files["checkpoint"]) == "v1"  # diffusers' reading of the same header
    assert diffusers_model_type(files["controlnet"]) == "controlnet"
    # only the header is read: the file's first bytes alone give the same answer
    data = files["checkpoint"].read_bytes()
    head = tmp_path / "head.safetensors"
    head.write_bytes(data[: 8 + int.from_bytes(data[:8], "little")] + b"\0" * 8)
    assert read_safetensors_header(head) == header and head.stat().st_size < len(data) / 10


def test_sha256_is_cached_by_path_size_and_mtime(folders, tmp_path):
    _, root, files = folders
    cache_file = tmp_path / "hashes.json"
    reg = ModelRegistry([root], hash_cache=cache_file)
    first = reg.hashes.hashed
    assert first >= 3  # two checkpoints and a ControlNet, hashed once
    os.utime(root, None)  # a rescan that finds nothing changed hashes nothing
    reg._sig = ()
    reg.refresh()
    assert reg.hashes.hashed == first
    again = ModelRegistry([root], hash_cache=cache_file)  # a restart reads the cache file
    assert again.hashes.hashed == 0 and again.get("sd15-tiny").version == sha256(files["checkpoint"])
    st = files["checkpoint"].stat()
    os.utime(files["checkpoint"], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: hashed anew
    cache = HashCache(cache_file)
    assert cache.sha256(files["checkpoint"]) == sha256(files["checkpoint"]) and cache.hashed == 1


def test_a_clash_of_stems_serves_the_first_and_says_so(tmp_path, folders, caplog):
    _, root, files = folders
    import shutil

    for d in ("Stable-diffusion/a", "Stable-diffusion/b"):
        (tmp_path / d).mkdir(parents=True)
        shutil.copy(files["checkpoint"], tmp_path / d / "twin.safetensors")
        shutil.copytree(files["checkpoint"].with_name("sd15-tiny.config"), tmp_path / d / "twin.config")
    (tmp_path / "Stable-diffusion" / "bad name!.safetensors").write_bytes(b"")
    (tmp_path / "Stable-diffusion" / "broken.safetensors").write_bytes(b"\xff" * 16)
    with caplog.at_level(logging.WARNING, logger="diffuserve.registry"):
        reg = ModelRegistry([tmp_path])
    assert [e.id for e in reg.list()] == ["twin"] and reg.get("twin").single_file.rel == "a/twin.safetensors"
    text = " ".join(r.message for r in caplog.records)
    assert "b/twin.safetensors" in text and "taken" in text
    assert "bad name!" in text and "broken.safetensors" in text


def test_a_checkpoint_of_a_family_that_cannot_be_served_offline_is_skipped_naming_what_to_add(tmp_path, caplog):
    from safetensors.numpy import save_file

    (tmp_path / "checkpoints").mkdir()
    save_file(
        {"double_blocks.0.img_attn.qkv.weight": np.zeros((6, 2), np.float32)},
        str(tmp_path / "checkpoints" / "flux-dev.safetensors"),
    )
    with caplog.at_level(logging.WARNING, logger="diffuserve.registry"):
        reg = ModelRegistry([tmp_path])
    assert reg.list() == []
    text = " ".join(r.message for r in caplog.records)
    assert "flux" in text and "spiece.model" in text and "flux-dev.config" in text


def test_clip_tokenizer_from_the_shipped_merges_reads_as_clips():
    """The tokenizer the shipped configs get: CLIP's own ids (openai/clip-vit-large-patch14)."""
    from core.pipelines.single_file import SHIPPED_CONFIGS, shipped_tokenizers

    toks = shipped_tokenizers(SHIPPED_CONFIGS / "sdxl")
    ids = toks["tokenizer"]("a photo of a cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(toks["tokenizer"]) == 49408 and toks["tokenizer"].model_max_length == 77
    assert toks["tokenizer_2"].pad_token == "!" and toks["tokenizer"].pad_token == "<|endoftext|>"


def shipped_models(family: str):
    """The models of a shipped config, on the meta device (no memory): what a real checkpoint of the family holds."""
    import diffusers
    import torch
    import transformers

    from core.registry import SHIPPED_CONFIGS

    c = SHIPPED_CONFIGS / family
    with torch.device("meta"):
        models = {
            "unet": diffusers.UNet2DConditionModel.from_config(diffusers.UNet2DConditionModel.load_config(c / "unet")),
            "vae": diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(c / "vae")),
        }
        for name, cls in (("text_encoder", "CLIPTextModel"), ("text_encoder_2", "CLIPTextModelWithProjection")):
            if (c / name).is_dir():
                config = transformers.CLIPTextConfig.from_pretrained(c / name)
                models[name] = getattr(transformers, cls)(config)
    return models


@pytest.mark.parametrize(
    "family, expected", [("sd1", "v1"), ("sd1-inpaint", "inpainting"), ("sd2", "v2"), ("sdxl", "xl_base")]
)
def test_shipped_configs_describe_real_checkpoints_of_their_family(family, expected):
    """A checkpoint of the shipped config's shapes, in the original layout (our writer), is what diffusers recognises
    as that family (its own key checks: SD 2's 1024-wide cross-attention, SDXL's 32-layer OpenCLIP...), what the
    registry detects, and what diffusers' converters turn back into exactly the shipped models' tensors."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )

    from core.registry import TensorShapes
    from tests.fixtures.single_file import (
        clip_to_original,
        openclip_to_original,
        unet_to_original,
        vae_to_original,
    )

    m = shipped_models(family)
    checkpoint = {**unet_to_original(m["unet"]), **vae_to_original(m["vae"])}
    if family == "sdxl":
        checkpoint.update(clip_to_original(m["text_encoder"], "conditioner.embedders.0.transformer."))
        checkpoint.update(openclip_to_original(m["text_encoder_2"], "conditioner.embedders.1.model."))
    elif family == "sd2":
        checkpoint.update(openclip_to_original(m["text_encoder"], "cond_stage_model.model."))
    else:
        checkpoint.update(clip_to_original(m["text_encoder"]))
    header = {k: {"shape": list(v.shape)} for k, v in checkpoint.items()}
    assert infer_diffusers_model_type(TensorShapes(header)) == expected
    assert detect_family(header) == (family.split("-")[0], "inpaint" if "inpaint" in family else None)
    for name, convert in (("unet", convert_ldm_unet_checkpoint), ("vae", convert_ldm_vae_checkpoint)):
        back = convert(checkpoint, m[name].config)
        want = {k: tuple(v.shape) for k, v in m[name].state_dict().items()}
        assert {k: tuple(v.shape) for k, v in back.items()} == want, name


# -- through the service ----------------------------------------------------------------------------------------------
def test_a_single_file_checkpoint_draws_what_its_diffusers_folder_draws(client, folders):
    _, _, files = folders
    models = {m["id"]: m for m in client.get("/v1/models").json()}
    assert models["sd15-tiny"]["sha256"] == sha256(files["checkpoint"])
    assert "legacy" not in models
    folder = draw(client, "/v1/txt2img", {"model": "tiny-sd"})
    single = draw(client, "/v1/txt2img", {"model": "sd15-tiny"})
    assert np.array_equal(folder, single)
    assert folder.std() > 0


def test_an_sdxl_single_file_draws_what_its_diffusers_folder_draws(client, folders):
    _, _, files = folders
    models = {m["id"]: m for m in client.get("/v1/models").json()}
    assert models["sdxl-tiny"]["pipeline_class"] == "StableDiffusionXLPipeline"
    assert models["sdxl-tiny"]["sha256"] == sha256(files["sdxl"])
    folder = draw(client, "/v1/txt2img", {"model": "tiny-sdxl-wide"})
    single = draw(client, "/v1/txt2img", {"model": "sdxl-tiny"})
    assert np.array_equal(folder, single) and folder.std() > 0


def test_a_kohya_lora_draws_what_its_peft_twin_draws(client):
    base = draw(client, "/v1/txt2img", {"model": "sd15-tiny"})
    kohya = draw(client, "/v1/txt2img", {"model": "sd15-tiny", "loras": [{"name": "ink-kohya", "scale": 1.0}]})
    peft = draw(client, "/v1/txt2img", {"model": "tiny-sd", "loras": [{"name": "ink-peft", "scale": 1.0}]})
    assert np.abs(kohya - base).max() > 10  # the adapter changes the image
    assert np.abs(kohya - peft).max() <= 1


def test_a_lora_of_another_base_fails_the_job_as_bad_input_and_leaves_the_model_as_it_was(client):
    """An SD 1.x LoRA on an SDXL checkpoint: the job fails with invalid_input naming the LoRA and the model (not an
    internal error), and the next job on that model draws what it drew before."""
    before = draw(client, "/v1/txt2img", {"model": "sdxl-tiny"})
    r = client.post("/v1/txt2img", json={"model": "sdxl-tiny", "prompt": "a cat", "seed": 7,
                                         "num_inference_steps": 3, "loras": [{"name": "ink-kohya"}]})  # fmt: skip
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_input", job["error"]
    assert "ink-kohya" in job["error"]["message"] and "sdxl-tiny" in job["error"]["message"]
    assert np.array_equal(draw(client, "/v1/txt2img", {"model": "sdxl-tiny"}), before)


def test_a_single_file_controlnet_draws_what_its_diffusers_folder_draws(client):
    rng = np.random.default_rng(0)
    control = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    control.save(buf, format="PNG")
    import base64

    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = {"control_image": uri, "preprocess": "none", "controlnet_conditioning_scale": 1.0}
    folder = draw(client, "/v1/controlnet", {"model": "tiny-sd", "controlnet": "tiny-controlnet", **body})
    single = draw(client, "/v1/controlnet", {"model": "sd15-tiny", "controlnet": "canny-tiny", **body})
    plain = draw(client, "/v1/txt2img", {"model": "sd15-tiny"})
    assert np.array_equal(folder, single)
    assert not np.array_equal(single, plain)


def test_a_checkpoint_that_does_not_fit_its_shipped_config_fails_naming_the_sidecar(folders, tmp_path):
    """Without its sidecar, the tiny checkpoint takes SD 1.5's shipped config: loading fails with a job error that
    says what to add, offline (no hub download is tried)."""
    import shutil

    import torch

    from core.errors import JobError
    from core.pipelines.single_file import load_pipeline

    _, _, files = folders
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(files["checkpoint"], tmp_path / "checkpoints" / "bare.safetensors")
    entry = ModelRegistry([tmp_path]).get("bare")
    assert not entry.single_file.sidecar and entry.single_file.config.name == "sd1"
    with pytest.raises(JobError) as e:
        load_pipeline(entry.pipeline_class, entry.single_file, torch.float32)
    assert e.value.code == "model_load_failed" and "bare.config" in str(e.value)
    assert str(tmp_path) not in str(e.value) and "single_file_configs" not in str(e.value)  # no server path shown
