"""Image to image with a diffusers pipeline: the input image noised to ``strength``, then denoised."""

from __future__ import annotations

from core.contract import RunContext, RunResult
from core.pipelines.loader import denoise, image_result, open_image
from core.registry import ModelEntry
from core.schemas import Img2ImgRequest


def run(request: Img2ImgRequest, model: ModelEntry, ctx: RunContext, engines) -> RunResult:
    import diffusers

    # 1. load (0 ms when warm) and activate this request's LoRAs
    base, load_ms = engines.pipelines.base(model)
    engines.pipelines.apply_loras(model, base, request.loras, ctx)
    # 2. the image-to-image pipeline of the same components, with a fresh scheduler
    scheduler = engines.pipelines.scheduler(request.scheduler, base, model)
    pipe = diffusers.AutoPipelineForImage2Image.from_pipe(base, scheduler=scheduler)
    # 3. the input image at the requested size
    image = open_image(ctx, request.image, (request.width, request.height))
    # 4. denoise and encode
    out, inference_ms = denoise(
        pipe,
        request,
        ctx,
        engines.pipelines.fast,
        image=image,
        strength=request.strength,
        num_images_per_prompt=request.num_images,
        output_type="pil",
    )
    return image_result(out, request, model, load_ms, inference_ms)
