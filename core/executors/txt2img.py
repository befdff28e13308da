"""Text to image with a diffusers pipeline."""

from __future__ import annotations

from core.contract import RunContext, RunResult
from core.pipelines.loader import denoise, image_result
from core.registry import ModelEntry
from core.schemas import Txt2ImgRequest


def run(request: Txt2ImgRequest, model: ModelEntry, ctx: RunContext, engines) -> RunResult:
    # 1. load (0 ms when warm) and activate this request's LoRAs
    base, load_ms = engines.pipelines.base(model)
    engines.pipelines.apply_loras(model, base, request.loras, ctx)
    # 2. this request's pipeline: the cached components with a fresh scheduler
    scheduler = engines.pipelines.scheduler(request.scheduler, base, model)
    pipe = type(base).from_pipe(base, scheduler=scheduler) if hasattr(base, "from_pipe") else base
    # 3. denoise, one generator per image
    out, inference_ms = denoise(pipe, request, ctx, num_images_per_prompt=request.num_images, output_type="pil")
    # 4. encode
    return image_result(out, request, model, load_ms, inference_ms)
