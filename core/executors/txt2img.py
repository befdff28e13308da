"""Text to image with a diffusers pipeline."""

from __future__ import annotations

from types import SimpleNamespace

from core.contract import RunContext, RunResult
from core.pipelines import fastpath
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
    out, inference_ms = denoise(
        pipe, request, ctx, engines.pipelines.fast, num_images_per_prompt=request.num_images, output_type="pil"
    )
    # 4. encode
    return image_result(out, request, model, load_ms, inference_ms)


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
    requests: list[Txt2ImgRequest], model: ModelEntry, ctxs: list[RunContext], engines
) -> list[RunResult | BaseException]:
    """Several requests of one ``batch_key`` in one pipeline call. Each image has its own generator (``seed + i``),
    so it equals the same request alone; progress goes to each job, and a job canceled, past its deadline or no
    longer ours leaves with that outcome at the next step (when none is left, the call is interrupted)."""
    import time

    import torch

    from core.errors import DeadlineExceeded, JobCancelled, LeaseLost

    r0 = requests[0]
    # 1. load (0 ms when warm) and activate the LoRAs the batch shares
    base, load_ms = engines.pipelines.base(model)
    engines.pipelines.apply_loras(model, base, r0.loras, ctxs[0])
    # 2. the pipeline of the cached components, with a fresh scheduler
    scheduler = engines.pipelines.scheduler(r0.scheduler, base, model)
    pipe = type(base).from_pipe(base, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    # 3. one prompt and one generator per image, and whose image it is
    owners = [k for k, r in enumerate(requests) for _ in range(r.num_images)]
    prompts = [requests[k].prompt for k in owners]
    negatives = [requests[k].negative_prompt for k in owners] if r0.negative_prompt else None
    generators = [torch.Generator("cpu").manual_seed(r.seed + i) for r in requests for i in range(r.num_images)]
    outcomes: list[RunResult | BaseException | None] = [None] * len(requests)

    def on_step_end(pipeline, step, timestep, kwargs):
        total = getattr(pipeline, "_num_timesteps", None) or r0.num_inference_steps
        for k, ctx in enumerate(ctxs):
            if outcomes[k] is None:
                try:
                    ctx.progress(step + 1, int(total))
                except (JobCancelled, LeaseLost, DeadlineExceeded) as e:
                    outcomes[k] = e
        if all(o is not None for o in outcomes):
            pipeline._interrupt = True  # nobody is left: the pipeline stops at its next step
        return kwargs

    # 4. denoise
    fastpath.per_call(pipe, engines.pipelines.fast, r0.height, r0.width, len(generators))
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            out = pipe(
                prompt=prompts,
                negative_prompt=negatives,
                height=r0.height,
                width=r0.width,
                num_inference_steps=r0.num_inference_steps,
                guidance_scale=r0.guidance_scale,
                generator=generators,
                callback_on_step_end=on_step_end,
                output_type="pil",
            )
    except Exception as e:  # noqa: BLE001 - the batch failed: each job records why
        return [o if o is not None else e for o in outcomes]
    inference_ms = (time.perf_counter() - t0) * 1000
    # 5. each job's images, encoded
    for k, r in enumerate(requests):
        if outcomes[k] is None:
            mine = SimpleNamespace(images=[im for im, owner in zip(out.images, owners) if owner == k])
            outcomes[k] = image_result(mine, r, model, load_ms, inference_ms)
    return outcomes
