"""Image to image with a diffusers pipeline: the input image noised to ``strength``, then denoised."""

from __future__ import annotations

from core.catalog import FAMILIES
from core.contract import Batching, Executor, RunContext, RunResult
from core.pipelines.loader import denoise, denoise_batch, image_result, open_image
from core.registry import ModelEntry
from core.schemas import Img2ImgRequest
from core.warm import Warm


def run(request: Img2ImgRequest, model: ModelEntry, ctx: RunContext, warm: Warm) -> RunResult:
    import diffusers

    # 1. load (0 ms when warm) and activate this request's LoRAs
    base, load_ms = warm.pipelines.base(model)
    warm.pipelines.apply_loras(model, base, request.loras, ctx)
    # 2. the image-to-image pipeline of the same components, with a fresh scheduler
    scheduler = warm.pipelines.scheduler(request.scheduler, base, model)
    pipe = diffusers.AutoPipelineForImage2Image.from_pipe(base, scheduler=scheduler)
    # 3. the input image at the requested size (once per image where the pipeline encodes one per generator)
    image = open_image(ctx, request.image, (request.width, request.height))
    if FAMILIES[model.pipeline_class].img2img_input_per_image:
        image = [image] * request.num_images
    # 4. denoise and encode
    denoised = denoise(
        pipe,
        request,
        ctx,
        warm.pipelines.fast,
        image=image,
        strength=request.strength,
        num_images_per_prompt=request.num_images,
        output_type="pil",
    )
    return image_result(denoised, request, model, load_ms)


def batch_key(request: Img2ImgRequest, model: ModelEntry) -> tuple | None:
    """txt2img's key (model, size, steps, scheduler, guidance, LoRAs) and the strength: each request keeps its own
    image, prompt and generators."""
    from core.executors.txt2img import batch_key as txt2img_key

    key = txt2img_key(request, model)
    return None if key is None else (*key, request.strength)


def run_batch(
    requests: list[Img2ImgRequest], model: ModelEntry, ctxs: list[RunContext], warm: Warm
) -> list[RunResult | BaseException]:
    """Several requests of one ``batch_key`` in one call; a request whose image cannot be read fails alone."""
    import diffusers

    r0 = requests[0]
    # 1. load (0 ms when warm) and activate the LoRAs the batch shares
    base, load_ms = warm.pipelines.base(model)
    warm.pipelines.apply_loras(model, base, r0.loras, ctxs[0])
    # 2. the image-to-image pipeline of the same components, with a fresh scheduler
    scheduler = warm.pipelines.scheduler(r0.scheduler, base, model)
    pipe = diffusers.AutoPipelineForImage2Image.from_pipe(base, scheduler=scheduler)
    # 3. each request's image at the requested size (one that cannot be read fails that job alone)
    outcomes: list = [None] * len(requests)
    images: list = [None] * len(requests)
    for k, (r, ctx) in enumerate(zip(requests, ctxs, strict=True)):
        try:
            images[k] = open_image(ctx, r.image, (r.width, r.height))
        except Exception as e:  # noqa: BLE001 - that job's own error
            outcomes[k] = e
    # 4. denoise together and encode each job's images
    return denoise_batch(
        pipe,
        requests,
        ctxs,
        warm.pipelines.fast,
        outcomes,
        model,
        load_ms,
        per_request={"image": images},
        strength=r0.strength,
    )


EXECUTOR: Executor[Img2ImgRequest] = Executor(run, Batching(batch_key, run_batch))
