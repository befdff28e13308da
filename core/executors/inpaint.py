"""Inpainting with a diffusers pipeline: white pixels of the mask are repainted."""

from __future__ import annotations

from core.catalog import FAMILIES
from core.contract import Executor, RunContext, RunResult
from core.pipelines.loader import denoise, image_result, open_image
from core.registry import ModelEntry
from core.schemas import InpaintRequest
from core.warm import Warm


def run(request: InpaintRequest, model: ModelEntry, ctx: RunContext, warm: Warm) -> RunResult:
    import diffusers

    # 1. load (0 ms when warm) and activate this request's LoRAs
    base, load_ms = warm.pipelines.base(model)
    warm.pipelines.apply_loras(model, base, request.loras, ctx)
    # 2. an inpainting model's own pipeline, or the inpainting pipeline of a text-to-image model's components
    scheduler = warm.pipelines.scheduler(request.scheduler, base, model)
    if FAMILIES[model.pipeline_class].inpaint_native:
        pipe = type(base).from_pipe(base, scheduler=scheduler)
    else:
        pipe = diffusers.AutoPipelineForInpainting.from_pipe(base, scheduler=scheduler)
    # 3. the image and its mask at the requested size
    size = (request.width, request.height)
    image, mask = open_image(ctx, request.image, size), open_image(ctx, request.mask_image, size, mode="L")
    # 4. denoise and encode
    denoised = denoise(
        pipe,
        request,
        ctx,
        warm.pipelines.fast,
        image=image,
        mask_image=mask,
        strength=request.strength,
        num_images_per_prompt=request.num_images,
        output_type="pil",
    )
    return image_result(denoised, request, model, load_ms)


EXECUTOR: Executor[InpaintRequest] = Executor(run)
