"""What the service knows, in one torch-free place: pipeline families and their tasks, scheduler names, the
engine's samplers, what can be trained and served with LoRA, frame rules, and the limits of every cost a client
controls (documented in the README). The registry, the gateway, the request models and the executors read it;
it imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal


class ModelKind(str, Enum):
    """What serves a model: our engine (``core/ddpm``) or a diffusers pipeline. The executor table's first key."""

    engine = "engine"
    diffusers = "diffusers"


# -- diffusers pipeline families -------------------------------------------------------------------------------
# schedulers by request name -> (diffusers class, extra config)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
}
# flow-matching models take flow schedulers only
FLOW_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


@dataclass(frozen=True)
class Family:
    tasks: tuple[str, ...]
    default_size: tuple[int, int]  # (width, height) when the config does not tell
    flow: bool = False
    video: bool = False
    controlnet_class: str | None = None
    inpaint_native: bool = False  # an inpainting model: its own pipeline inpaints (no AutoPipelineForInpainting)
    guidance: float = 7.5
    steps: int = 30


FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": Family(
        ("txt2img", "img2img", "inpaint", "controlnet"),
        (512, 512),
        controlnet_class="StableDiffusionControlNetPipeline",
    ),
    "StableDiffusionInpaintPipeline": Family(("inpaint",), (512, 512), inpaint_native=True),
    "StableDiffusionXLPipeline": Family(
        ("txt2img", "img2img", "inpaint", "controlnet"),
        (1024, 1024),
        controlnet_class="StableDiffusionXLControlNetPipeline",
        guidance=5.0,
    ),
    "StableDiffusion3Pipeline": Family(
        ("txt2img", "img2img", "inpaint"), (1024, 1024), flow=True, guidance=7.0, steps=28
    ),
    "FluxPipeline": Family(("txt2img", "img2img", "inpaint"), (1024, 1024), flow=True, guidance=3.5, steps=28),
    "WanPipeline": Family(("video",), (832, 480), flow=True, video=True, guidance=5.0, steps=30),
    "CogVideoXPipeline": Family(("video",), (720, 480), video=True, guidance=6.0, steps=50),
    "AnimateDiffPipeline": Family(("video",), (512, 512), video=True, guidance=7.5, steps=25),
}


def scheduler_names(family: Family) -> list[str]:
    return list(FLOW_SCHEDULERS) if family.flow else list(SCHEDULERS)


def valid_num_frames(pipeline_class: str, n: int) -> str | None:
    """None when ``n`` frames is valid for the pipeline, else why not."""
    if pipeline_class == "WanPipeline" and (n - 1) % 4:
        return "must be 4k+1 for Wan models (e.g. 17, 33, 81)"
    if pipeline_class == "CogVideoXPipeline" and ((n - 1) % 8 or n > 49):
        return "must be 8k+1 and at most 49 for CogVideoX models"
    if pipeline_class == "AnimateDiffPipeline" and n > 32:
        return "must be at most 32 for AnimateDiff models"
    return None


# base models whose LoRA training loop is implemented (core/training/lora_job.py)
LORA_TRAINABLE = ("StableDiffusionPipeline",)
# families whose pipelines load LoRA adapters per request
LORA_SERVABLE = (
    "StableDiffusionPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusion3Pipeline",
    "FluxPipeline",
)


# -- the engine's samplers, by objective ---------------------------------------------------------------------------
ENGINE_SCHEDULERS: dict[str, list[str]] = {
    "ddpm": ["ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_karras"],
    "flow": ["euler"],
}

# what each scheduler name means (GET /v1/schedulers)
SCHEDULER_DESCRIPTIONS: dict[str, str] = {
    "default": "the model's own scheduler (diffusers models)",
    "ddim": "DDIM (Song et al.), deterministic with eta=0",
    "ddpm": "DDPM ancestral sampling",
    "pndm": "PNDM (PLMS)",
    "lms": "LMS discrete",
    "heun": "Heun discrete (2nd order)",
    "euler": "Euler discrete; for flow models (SD3, Flux, Wan, engine flow) the flow-matching Euler solver",
    "euler_a": "Euler ancestral",
    "dpmpp_2m": "DPM-Solver++ 2M",
    "dpmpp_2m_karras": "DPM-Solver++ 2M with Karras sigmas",
    "unipc": "UniPC multistep (flow sigmas for flow models)",
}

# every scheduler name a request may give ("default": a diffusers model's own; diffusers schedulers; engine samplers)
SchedulerName = Literal[
    "default", "ddim", "ddpm", "pndm", "lms", "heun", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc"
]


# -- AUTOMATIC1111's sampler and scheduler names (the /sdapi/v1 adapter) -----------------------------------------
# A1111 sampler name -> our scheduler names in order of preference: the first one the model serves is used. The
# engine's DDIM is the Euler method on the probability-flow ODE and its DDPM sampler the ancestral one, so "Euler"
# and "Euler a" reach engine models too.
A1111_SAMPLERS: dict[str, tuple[str, ...]] = {
    "DPM++ 2M": ("dpmpp_2m",),
    "DPM++ 2M Karras": ("dpmpp_2m_karras",),
    "Euler a": ("euler_a", "ddpm"),
    "Euler": ("euler", "ddim"),
    "LMS": ("lms",),
    "Heun": ("heun",),
    "DDIM": ("ddim",),
    "DDPM": ("ddpm",),
    "PLMS": ("pndm",),
    "UniPC": ("unipc",),
}
# A1111 1.9+ splits the noise schedule out of the sampler name: these are the ones we serve
A1111_SCHEDULERS: dict[str, str] = {"automatic": "Automatic", "karras": "Karras"}


# -- limits --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FamilyLimits:
    max_steps: int  # num_inference_steps (generation) or training steps
    max_pixels: int  # width * height of one image or frame
    max_images: int  # images per job (num_images), or the training batch
    default_timeout_s: int
    max_timeout_s: int
    max_frames: int = 1
    max_work: int | None = None  # training: steps * batch * resolution^2 (pixel-updates), bounds the whole run


LIMITS: dict[str, FamilyLimits] = {
    # the from-scratch engine: small models, square images up to 4x their native size
    "engine": FamilyLimits(
        max_steps=1000, max_pixels=256 * 256, max_images=8, default_timeout_s=300, max_timeout_s=1800
    ),
    # diffusers image pipelines (SD, SDXL, SD3, Flux)
    "image": FamilyLimits(
        max_steps=500, max_pixels=2048 * 2048, max_images=8, default_timeout_s=900, max_timeout_s=3600
    ),
    # diffusers video pipelines: frames * pixels bounds the latent volume (81 frames of 832x480 fit)
    "video": FamilyLimits(
        max_steps=500, max_pixels=1280 * 720, max_images=1, default_timeout_s=1800, max_timeout_s=3600, max_frames=257
    ),
    "lora_training": FamilyLimits(
        max_steps=20_000,
        max_pixels=1024 * 1024,
        max_images=16,
        default_timeout_s=4 * 3600,
        max_timeout_s=12 * 3600,
        max_work=20_000 * 4 * 512 * 512,
    ),
    "ddpm_training": FamilyLimits(
        max_steps=200_000,
        max_pixels=256 * 256,
        max_images=512,
        default_timeout_s=4 * 3600,
        max_timeout_s=24 * 3600,
        max_work=200_000 * 128 * 32 * 32,
    ),
}

MAX_TIMEOUT_S = max(f.max_timeout_s for f in LIMITS.values())
MAX_VIDEO_VOLUME = 81 * 832 * 480  # frames * width * height of one video job

# datasets inside zips: checked from each image's header before anything is decoded
DATASET_FORMATS = ("PNG", "JPEG", "WEBP")
DATASET_MAX_FILES = 10_000
DATASET_MAX_UNCOMPRESSED = 2 * 1024**3
DATASET_MAX_IMAGE_PIXELS = 4096 * 4096
DATASET_MAX_ASPECT = 4.0  # longer side / shorter side: a 1x20000 strip would ask for gigabytes once resized
DATASET_MAX_DECODED_BYTES = 2 * 1024**3  # float32 tensors at the training resolution, all images together

# images a client sends (uploads, data: URIs): only these formats reach a decoder
IMAGE_FORMATS = ("png", "jpeg", "webp")


def family_of(kind: ModelKind, video: bool = False) -> str:
    """The limits family of a served model: ``engine`` for our engine, ``video`` or ``image`` for diffusers."""
    if kind == ModelKind.engine:
        return "engine"
    return "video" if video else "image"


# ControlNet preprocessing of the control image (core/pipelines/preprocess.py); those that need a model of their own
PREPROCESSORS = ("canny", "depth", "none")
MODEL_PREPROCESSORS = ("depth",)
