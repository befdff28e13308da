import json

from core.registry import ModelRegistry


def test_registry_reads_every_kind(tiny_models_dir):
    reg = ModelRegistry([tiny_models_dir])
    by_id = {e.id: e for e in reg.list()}
    assert by_id["tiny-sd"].tasks == ["txt2img", "img2img", "inpaint", "controlnet"]
    assert by_id["tiny-sd"].pipeline_class == "StableDiffusionPipeline"
    assert (by_id["tiny-sd"].width, by_id["tiny-sd"].height) == (64, 64)  # unet sample_size 8 x an 8x VAE
    assert by_id["tiny-sd-inpaint"].tasks == ["inpaint"]
    assert by_id["tiny-sdxl"].tasks == ["txt2img", "img2img", "inpaint", "controlnet"]
    assert by_id["tiny-wan"].tasks == ["video"] and "unipc" in by_id["tiny-wan"].schedulers
    assert "dpmpp_2m_karras" in by_id["tiny-sd"].schedulers and "dpmpp_2m_karras" not in by_id["tiny-wan"].schedulers
    assert reg.controlnet_names() == ["tiny-controlnet"]
    assert len(by_id["tiny-sd"].version) == 64


def test_models_config_names_hub_ids(tmp_path):
    cfg = tmp_path / "models.json"
    cfg.write_text(
        json.dumps(
            {
                "models": {
                    "sd15": {"hub_id": "runwayml/stable-diffusion-v1-5", "pipeline": "StableDiffusionPipeline"},
                    "flux": {
                        "hub_id": "black-forest-labs/FLUX.1-schnell",
                        "pipeline": "FluxPipeline",
                        "num_inference_steps": 4,
                    },
                    "wan": {"hub_id": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "pipeline": "WanPipeline"},
                },
                "controlnets": {"canny": {"hub_id": "lllyasviel/sd-controlnet-canny"}},
            }
        )
    )
    reg = ModelRegistry([], cfg)
    sd = reg.get("sd15")
    assert sd.source == "runwayml/stable-diffusion-v1-5" and (sd.width, sd.height) == (512, 512)
    assert reg.get("flux").default_num_inference_steps == 4 and reg.get("flux").schedulers == [
        "default",
        "euler",
        "unipc",
    ]
    assert reg.get("wan").tasks == ["video"]
    assert reg.controlnet("canny") == "lllyasviel/sd-controlnet-canny"
