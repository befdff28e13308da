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
    # sizes: width and height are multiples of the VAE's scale x the denoiser's patch x latent_pack (Flux packs 2x2
    # latents into one token), so SD and SDXL take multiples of 8, SD3, Flux, Wan and CogVideoX multiples of 16.
    # ``patch`` is the denoiser's usual patch, for a hub id (a local model's config says its own)
    patch: int = 1
    latent_pack: int = 1
    # frames (video): num_frames - 1 a multiple of frames_step (the VAE's time compression), at most max_frames
    frames_step: int = 1
    max_frames: int | None = None
    # image-to-image takes its input once per image: diffusers' SD3 pipeline encodes image[i] with generator[i]
    # before it would repeat a single input, so num_images > 1 needs the input given num_images times
    img2img_input_per_image: bool = False


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
        ("txt2img", "img2img", "inpaint"),
        (1024, 1024),
        flow=True,
        guidance=7.0,
        steps=28,
        patch=2,
        img2img_input_per_image=True,
    ),
    "FluxPipeline": Family(
        ("txt2img", "img2img", "inpaint"), (1024, 1024), flow=True, guidance=3.5, steps=28, latent_pack=2
    ),
    "WanPipeline": Family(
        ("video",), (832, 480), flow=True, video=True, guidance=5.0, steps=30, patch=2, frames_step=4
    ),
    "CogVideoXPipeline": Family(
        ("video",), (720, 480), video=True, guidance=6.0, steps=50, patch=2, frames_step=8, max_frames=49
    ),
    "AnimateDiffPipeline": Family(("video",), (512, 512), video=True, guidance=7.5, steps=25, max_frames=32),
}

# flow-matching image-to-image and inpainting pipelines noise their input with the scheduler's ``scale_noise``,
# which only the flow-matching Euler scheduler has
FLOW_NOISING_SCHEDULERS = ("euler",)
NOISING_TASKS = ("img2img", "inpaint")


def scheduler_names(family: Family, task: str | None = None) -> list[str]:
    """The scheduler names a family's models take (for ``task``: those its pipeline can run)."""
    if family.flow and task in NOISING_TASKS:
        return list(FLOW_NOISING_SCHEDULERS)
    return list(FLOW_SCHEDULERS) if family.flow else list(SCHEDULERS)


def valid_num_frames(pipeline_class: str, n: int) -> str | None:
    """None when ``n`` frames is valid for the pipeline, else why not."""
    family = FAMILIES[pipeline_class]
    step, top = family.frames_step, family.max_frames
    if (n - 1) % step == 0 and (top is None or n <= top):
        return None
    rules = [f"{step}k+1 (e.g. {step + 1}, {2 * step + 1}, {4 * step + 1})"] if step > 1 else []
    rules += [f"at most {top}"] if top is not None else []
    return f"must be {' and '.join(rules)} for {pipeline_class} models"


# the denoising steps an image-to-image or inpainting request runs: diffusers keeps int(steps x strength) of a
# diffusion model's steps and refuses none at all, except SD's image-to-image pipeline, which does not count them:
# there PNDM (PLMS: from 2 steps on, its first timestep twice) still runs one when int(steps x strength) is 0, and
# any other scheduler fails. A flow model keeps steps - int(steps x (1 - strength)).
STRENGTH_UNCOUNTED = (("StableDiffusionPipeline", "img2img"),)
PLMS_SCHEDULER = "PNDMScheduler"


def denoising_steps(pipeline_class: str, task: str, steps: int, strength: float, scheduler_class: str | None) -> int:
    """How many of ``steps`` an image-to-image or inpainting pipeline runs at ``strength`` (0: it cannot run)."""
    if FAMILIES[pipeline_class].flow:
        return steps - int(max(steps - min(steps * strength, steps), 0))
    kept = int(steps * strength)
    plms = scheduler_class == PLMS_SCHEDULER and steps >= 2
    if kept == 0 and plms and (pipeline_class, task) in STRENGTH_UNCOUNTED:
        return 1
    return kept


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


# -- step caching: reusing a denoiser's work between adjacent steps ------------------------------------------------
@dataclass(frozen=True)
class CacheMethod:
    """One way to skip denoiser work on steps where it changes little. A request sets one knob: ``threshold`` (how
    much the probe may change before the full network runs again; 0 never reuses) or ``interval`` (the full network
    every N steps; 1 never reuses). ``adaptive`` methods decide each step from the batch's own numbers, so a batch
    would decide for all its images: a request with one runs alone (its pixels then equal the same request drawn
    again). ``interval`` methods decide by the step's index only, the same for every image, so they batch."""

    knob: Literal["threshold", "interval"]
    default: float
    low: float
    high: float
    adaptive: bool
    description: str


CACHE_METHODS: dict[str, CacheMethod] = {
    "deep": CacheMethod(
        "interval",
        3,
        1,
        10,
        False,
        "DeepCache (Ma et al. 2024): the engine U-Net's deep features are kept from the last full step and only the "
        "outermost down and up blocks run between full steps, every `interval`",
    ),
    "first_block": CacheMethod(
        "threshold",
        0.05,
        0.0,
        1.0,
        True,
        "First-Block Cache: the first transformer block always runs; when its output residual changed by less than "
        "`threshold` (mean absolute difference relative to its mean absolute value) since the last full step, the "
        "other blocks' residual from that step is reused",
    ),
    "taylorseer": CacheMethod(
        "interval",
        5,
        1,
        20,
        False,
        "TaylorSeer (Liu et al. 2025): attention and feed-forward outputs computed every `interval` steps and "
        "predicted between them by a first-order Taylor expansion over the steps",
    ),
    "mag": CacheMethod(
        "threshold",
        0.06,
        0.0,
        1.0,
        True,
        "MagCache (Ma et al. 2025): blocks skipped while the accumulated error, from the model's measured residual "
        "magnitude ratios, stays under `threshold` (Flux: diffusers' published ratios)",
    ),
}
CacheMethodName = Literal["deep", "first_block", "taylorseer", "mag"]

# which methods each kind of denoiser takes: the engine by its network, diffusers pipelines by family (diffusers'
# cache hooks, on transformer denoisers only). Not listed, with diffusers 0.42: SD3 (its transformer has no
# ``enable_cache``), TaylorSeer on Wan and CogVideoX (its default patterns match no attention module of theirs:
# nothing would be cached), MagCache beyond Flux (no published ratios), and the U-Net families (no hook).
ENGINE_CACHE_METHODS: dict[str, tuple[str, ...]] = {"unet": ("deep",), "dit": ("first_block",)}
FAMILY_CACHE_METHODS: dict[str, tuple[str, ...]] = {
    "FluxPipeline": ("first_block", "taylorseer", "mag"),
    "WanPipeline": ("first_block",),
    "CogVideoXPipeline": ("first_block",),
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

# -- ComfyUI's sampler and scheduler names (the /prompt adapter) ---------------------------------------------------
# (sampler_name, scheduler) -> our scheduler names in order of preference, as A1111_SAMPLERS (the engine's DDIM and
# DDPM are its Euler and ancestral samplers). "normal" is the model's own noise schedule; "karras" only where we serve
# a Karras variant. Any other pair is refused by name (the /prompt adapter), never approximated.
COMFYUI_SAMPLERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("euler", "normal"): ("euler", "ddim"),
    ("euler_ancestral", "normal"): ("euler_a", "ddpm"),
    ("heun", "normal"): ("heun",),
    ("lms", "normal"): ("lms",),
    ("dpmpp_2m", "normal"): ("dpmpp_2m",),
    ("dpmpp_2m", "karras"): ("dpmpp_2m_karras",),
    ("ddim", "normal"): ("ddim",),
    ("ddpm", "normal"): ("ddpm",),
    ("uni_pc", "normal"): ("unipc",),
}
COMFYUI_SCHEDULERS: tuple[str, ...] = ("normal", "karras")


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


# -- sizes --------------------------------------------------------------------------------------------------------
MAX_SIDE = 2048  # width and height of any generation request (the request models' bound)
ENGINE_MAX_SCALE = 4  # engine U-Nets draw square images up to 4x the size they were trained at


@dataclass(frozen=True)
class SizeRule:
    """The sizes a model draws, as GET /v1/models states them: width and height multiples of ``multiple``, at most
    ``max_width`` x ``max_height`` and ``max_pixels`` in all, equal when ``square_only``. A missing dimension is
    the model's native one (for a square-only model: the other one given)."""

    multiple: int
    max_width: int
    max_height: int
    max_pixels: int
    square_only: bool = False

    def round_down(self, width: int, height: int) -> tuple[int, int]:
        """The size on this rule at or below ``width`` x ``height``, side by side (at least one step a side)."""
        return (
            min(self.max_width, _floor(width, self.multiple)),
            min(self.max_height, _floor(height, self.multiple)),
        )

    def why_not(self, width: int, height: int) -> tuple[str, str] | None:
        """None when ``width`` x ``height`` follows the rule, else (field, why not)."""
        for name, side, top in (("width", width, self.max_width), ("height", height, self.max_height)):
            if side % self.multiple:
                return name, f"must be a multiple of {self.multiple}"
            if side > top:
                return name, f"at most {top}"
        if self.square_only and width != height:
            return "height", "must equal width: this model draws square images"
        return None


def _floor(value: int, multiple: int) -> int:
    return max(multiple, value - value % multiple)


def engine_size_rule(native: int, downsamples: int, dit: bool) -> SizeRule:
    """Our engine: a DiT draws at the size it was trained at only (its position embeddings are that size); a U-Net
    any square size its downsamplings divide (2^downsamples), up to ``ENGINE_MAX_SCALE`` x its native size."""
    max_pixels = LIMITS["engine"].max_pixels
    if dit:
        return SizeRule(native, native, native, max_pixels, square_only=True)
    multiple = 2**downsamples
    top = _floor(min(ENGINE_MAX_SCALE * native, int(max_pixels**0.5)), multiple)
    return SizeRule(multiple, top, top, max_pixels, square_only=True)


def diffusers_size_rule(family: Family, vae_scale: int, patch: int, max_patches: int | None = None) -> SizeRule:
    """A diffusers model: latents are image / ``vae_scale``, and the denoiser takes them in ``patch`` x ``patch``
    patches (Flux packs 2x2 latents besides: ``latent_pack``); a transformer whose position table is
    ``max_patches`` long (SD3's ``pos_embed_max_size``, Wan's ``rope_max_seq_len``) draws at most that many
    patches a side."""
    multiple = vae_scale * patch * family.latent_pack
    top = MAX_SIDE if max_patches is None else min(MAX_SIDE, max_patches * multiple)
    top = _floor(top, multiple)
    return SizeRule(multiple, top, top, LIMITS["video" if family.video else "image"].max_pixels)


# ControlNet preprocessing of the control image (core/pipelines/preprocess.py); those that need a model of their own
PREPROCESSORS = ("canny", "depth", "none")
MODEL_PREPROCESSORS = ("depth",)


# -- cross-request batching: where it pays ---------------------------------------------------------------------------
# A batch shares one denoising loop between queued jobs (core/runner.py). It pays while one image leaves the device
# idle between kernels (small images, small models) and stops paying once one image keeps it busy: past that a
# batch only makes each job wait for the others. By device type ("cpu", "cuda") and family ("engine" or a diffusers
# pipeline class): the most pixels per image (width x height) at which 8 clients batched still beat 8 clients run
# one by one beyond the noise between runs (bench/throughput.py, bench/README.md). Past it a job runs alone; a
# device or family not listed is not limited here (its executor's key decides).
# On a CPU (2 cores), through the service: the engine 1.9-2.4x at 16², 1.2-1.5x at 28² (within the runs' spread);
# tiny SD 2.4x at 64², 1.1-1.8x at 256² (within the spread). In the worker alone: the engine 1.0x at 64², tiny SD
# 0.9-1.15x at 128²-512². Flux's executor does not batch. CUDA is not measured: there memory alone caps a batch.
BATCHING_PAYS_UP_TO: dict[str, dict[str, int]] = {
    "cpu": {"engine": 16 * 16, "StableDiffusionPipeline": 64 * 64},
}


def batching_pays(device: str, family: str, pixels: int) -> bool:
    """Whether a job of ``family`` (``engine`` or a pipeline class) at ``pixels`` per image may join a batch on
    ``device`` (``cpu``, ``cuda:0``, ...)."""
    limit = BATCHING_PAYS_UP_TO.get(device.split(":")[0], {}).get(family)
    return limit is None or pixels <= limit
