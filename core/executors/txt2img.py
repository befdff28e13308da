"""Text to image with a diffusers pipeline."""

from __future__ import annotations

from core.contract import Batching, Executor, RunContext, RunResult
from core.pipelines.loader import denoise, denoise_batch, image_result
from core.registry import ModelEntry
from core.schemas import Txt2ImgRequest
from core.warm import Warm


def run(request: Txt2ImgRequest, model: ModelEntry, ctx: RunContext, warm: Warm) -> RunResult:
    # 1. load (0 ms when warm) and activate this request's LoRAs
    base, load_ms = warm.pipelines.base(model)
    warm.pipelines.apply_loras(model, base, request.loras, ctx)
    # 2. this request's pipeline: the cached components with a fresh scheduler
    scheduler = warm.pipelines.scheduler(request.scheduler, base, model)
    pipe = type(base).from_pipe(base, scheduler=scheduler) if hasattr(base, "from_pipe") else base
    # 3. denoise, one generator per image
    denoised = denoise(
        pipe, request, ctx, warm.pipelines.fast, num_images_per_prompt=request.num_images, output_type="pil"
    )
    # 4. encode
    return image_result(denoised, request, model, load_ms)


BATCHABLE_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def batch_key(request: Txt2ImgRequest, model: ModelEntry) -> tuple | None:
    """Requests with the same key share one denoising loop (one call with a list of prompts and one generator per
    image); None: this one runs alone."""
    if model.pipeline_class not in BATCHABLE_PIPELINES:
        return None
    loras = tuple((ref.name, ref.scale) for ref in request.loras)
    return (
        model.id,
        model.version,
        request.width,
        request.height,
        request.num_inference_steps,
        request.scheduler,
        request.guidance_scale,
        loras,
        bool(request.negative_prompt),
    )


def run_batch(
    requests: list[Txt2ImgRequest], model: ModelEntry, ctxs: list[RunContext], warm: Warm
) -> list[RunResult | BaseException]:
    """Several requests of one ``batch_key`` in one pipeline call (``loader.denoise_batch``): each image has its own
    generator, so it equals the same request alone."""
    r0 = requests[0]
    # 1. load (0 ms when warm) and activate the LoRAs the batch shares
    base, load_ms = warm.pipelines.base(model)
    warm.pipelines.apply_loras(model, base, r0.loras, ctxs[0])
    # 2. the pipeline of the cached components, with a fresh scheduler
    scheduler = warm.pipelines.scheduler(r0.scheduler, base, model)
    pipe = type(base).from_pipe(base, scheduler=scheduler)
    # 3. denoise together, one prompt and one generator per image; 4. each job's images
    outcomes: list = [None] * len(requests)
    return denoise_batch(
        pipe, requests, ctxs, warm.pipelines.fast, outcomes, model, load_ms, height=r0.height, width=r0.width
    )


EXECUTOR: Executor[Txt2ImgRequest] = Executor(run, Batching(batch_key, run_batch))
