"""Every cost a client controls, with its cap, in one table per job family (torch-free; documented in the README).

The request models (``core.schemas``) take their bounds from here, so the OpenAPI spec states what the service
enforces; what depends on the model (native size, steps per family) is checked at submit by ``api/submit.py``
and again by the worker. Datasets are checked image by image, from headers, before any training step.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    "engine": FamilyLimits(max_steps=1000, max_pixels=256 * 256, max_images=8, default_timeout_s=300, max_timeout_s=1800),
    # diffusers image pipelines (SD, SDXL, SD3, Flux)
    "image": FamilyLimits(max_steps=500, max_pixels=2048 * 2048, max_images=8, default_timeout_s=900, max_timeout_s=3600),
    # diffusers video pipelines: frames * pixels bounds the latent volume (81 frames of 832x480 fit)
    "video": FamilyLimits(max_steps=500, max_pixels=1280 * 720, max_images=1, default_timeout_s=1800, max_timeout_s=3600,
                          max_frames=257),
    "lora_training": FamilyLimits(max_steps=20_000, max_pixels=1024 * 1024, max_images=16, default_timeout_s=4 * 3600,
                                  max_timeout_s=12 * 3600, max_work=20_000 * 4 * 512 * 512),
    "ddpm_training": FamilyLimits(max_steps=200_000, max_pixels=256 * 256, max_images=512, default_timeout_s=4 * 3600,
                                  max_timeout_s=24 * 3600, max_work=200_000 * 128 * 32 * 32),
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


def family_of(kind: str, video: bool = False) -> str:
    """The limits family of a served model: ``engine`` for our engine, ``video`` or ``image`` for diffusers."""
    if kind.startswith("engine"):
        return "engine"
    return "video" if video else "image"
