"""The ComfyUI node types this adapter reads, as ``GET /object_info`` describes them to clients: inputs (with the
served lists of checkpoints, samplers, schedulers, LoRAs and ControlNets), outputs, categories."""

from __future__ import annotations

from typing import Any

from core.catalog import COMFYUI_SAMPLERS, COMFYUI_SCHEDULERS

MAX_SEED = 0xFFFFFFFFFFFFFFFF  # ComfyUI's own bound; seeds are folded into ours (graph.SEED_MODULUS)


def _int(default: int, lo: int, hi: int, step: int = 1) -> list:
    return ["INT", {"default": default, "min": lo, "max": hi, "step": step}]


def _float(default: float, lo: float, hi: float, step: float = 0.01) -> list:
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step}]


def node_types(checkpoints: list[str], loras: list[str], controlnets: list[str], inputs: list[str]) -> dict[str, dict]:
    """class_type -> (inputs {required, optional}, outputs (types, names), category, output node?)."""
    samplers = list(dict.fromkeys(s for s, _ in COMFYUI_SAMPLERS))
    schedulers = list(COMFYUI_SCHEDULERS)
    sampling = {
        "model": ["MODEL"],
        "seed": ["INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}],
        "steps": _int(20, 1, 1000),
        "cfg": _float(8.0, 0.0, 50.0, 0.1),
        "sampler_name": [samplers],
        "scheduler": [schedulers],
        "positive": ["CONDITIONING"],
        "negative": ["CONDITIONING"],
        "latent_image": ["LATENT"],
    }
    return {
        "CheckpointLoaderSimple": ({"required": {"ckpt_name": [checkpoints]}}, (("MODEL", "CLIP", "VAE"), None),
                                   "loaders", False),
        "CLIPTextEncode": ({"required": {"text": ["STRING", {"multiline": True, "dynamicPrompts": True}],
                                         "clip": ["CLIP"]}}, (("CONDITIONING",), None), "conditioning", False),
        "EmptyLatentImage": ({"required": {"width": _int(512, 16, 2048, 8), "height": _int(512, 16, 2048, 8),
                                           "batch_size": _int(1, 1, 8)}}, (("LATENT",), None), "latent", False),
        "KSampler": ({"required": {**sampling, "denoise": _float(1.0, 0.0, 1.0)}}, (("LATENT",), None), "sampling",
                     False),
        "KSamplerAdvanced": ({"required": {
            "model": ["MODEL"],
            "add_noise": [["enable", "disable"]],
            "noise_seed": sampling["seed"],
            **{k: sampling[k] for k in ("steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                                        "latent_image")},
            "start_at_step": _int(0, 0, 10000),
            "end_at_step": _int(10000, 0, 10000),
            "return_with_leftover_noise": [["disable", "enable"]],
        }}, (("LATENT",), None), "sampling", False),
        "VAEDecode": ({"required": {"samples": ["LATENT"], "vae": ["VAE"]}}, (("IMAGE",), None), "latent", False),
        "VAEEncode": ({"required": {"pixels": ["IMAGE"], "vae": ["VAE"]}}, (("LATENT",), None), "latent", False),
        "VAEEncodeForInpaint": ({"required": {"pixels": ["IMAGE"], "vae": ["VAE"], "mask": ["MASK"],
                                              "grow_mask_by": _int(6, 0, 64)}}, (("LATENT",), None), "latent/inpaint",
                                False),
        "SetLatentNoiseMask": ({"required": {"samples": ["LATENT"], "mask": ["MASK"]}}, (("LATENT",), None),
                               "latent/inpaint", False),
        "LoadImage": ({"required": {"image": [inputs, {"image_upload": True}]}}, (("IMAGE", "MASK"), None), "image",
                      False),
        "LoadImageMask": ({"required": {"image": [inputs, {"image_upload": True}],
                                        "channel": [["alpha", "red", "green", "blue"]]}}, (("MASK",), None), "mask",
                          False),
        "LoraLoader": ({"required": {"model": ["MODEL"], "clip": ["CLIP"], "lora_name": [loras],
                                     "strength_model": _float(1.0, -4.0, 4.0),
                                     "strength_clip": _float(1.0, -4.0, 4.0)}},
                       (("MODEL", "CLIP"), None), "loaders", False),
        "ControlNetLoader": ({"required": {"control_net_name": [controlnets]}}, (("CONTROL_NET",), None), "loaders",
                             False),
        "ControlNetApply": ({"required": {"conditioning": ["CONDITIONING"], "control_net": ["CONTROL_NET"],
                                          "image": ["IMAGE"], "strength": _float(1.0, 0.0, 5.0)}},
                            (("CONDITIONING",), None), "conditioning/controlnet", False),
        "ControlNetApplyAdvanced": ({"required": {"positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
                                                  "control_net": ["CONTROL_NET"], "image": ["IMAGE"],
                                                  "strength": _float(1.0, 0.0, 5.0),
                                                  "start_percent": _float(0.0, 0.0, 0.0),
                                                  "end_percent": _float(1.0, 1.0, 1.0)},
                                     "optional": {"vae": ["VAE"]}},
                                    (("CONDITIONING", "CONDITIONING"), ("positive", "negative")),
                                    "conditioning/controlnet", False),
        "Canny": ({"required": {"image": ["IMAGE"], "low_threshold": _float(0.4, 0.01, 0.99),
                                "high_threshold": _float(0.8, 0.01, 0.99)}}, (("IMAGE",), None),
                  "image/preprocessors", False),
        "SaveImage": ({"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
                      ((), None), "image", True),
        "PreviewImage": ({"required": {"images": ["IMAGE"]}}, ((), None), "image", True),
    }  # fmt: skip


DISPLAY_NAMES = {
    "CheckpointLoaderSimple": "Load Checkpoint",
    "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "EmptyLatentImage": "Empty Latent Image",
    "KSamplerAdvanced": "KSampler (Advanced)",
    "VAEDecode": "VAE Decode",
    "VAEEncode": "VAE Encode",
    "VAEEncodeForInpaint": "VAE Encode (for Inpainting)",
    "SetLatentNoiseMask": "Set Latent Noise Mask",
    "LoadImage": "Load Image",
    "LoadImageMask": "Load Image (as Mask)",
    "LoraLoader": "Load LoRA",
    "ControlNetLoader": "Load ControlNet Model",
    "ControlNetApply": "Apply ControlNet (OLD)",
    "ControlNetApplyAdvanced": "Apply ControlNet",
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
}
SERVED = tuple(DISPLAY_NAMES) + ("KSampler", "Canny")


def object_info(types: dict[str, tuple], only: str | None = None) -> dict[str, Any]:
    """``GET /object_info`` in ComfyUI's shape (``server.py`` ``node_info``)."""
    out: dict[str, Any] = {}
    for name, (inputs, (outputs, names), category, output_node) in types.items():
        if only is not None and name != only:
            continue
        out[name] = {
            "input": inputs,
            "input_order": {k: list(v) for k, v in inputs.items()},
            "output": list(outputs),
            "output_is_list": [False] * len(outputs),
            "output_name": list(names or outputs),
            "name": name,
            "display_name": DISPLAY_NAMES.get(name, name),
            "description": "",
            "python_module": "nodes",
            "category": category,
            "output_node": output_node,
        }
    return out
