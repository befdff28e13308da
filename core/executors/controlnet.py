"""ControlNet-conditioned generation with a diffusers pipeline; ``preprocess`` (``canny``: the edge map, ``depth``:
a depth model's map; ``core/pipelines/preprocess.py``) turns the control image into the map the ControlNet reads,
returned as an extra output."""

from __future__ import annotations

from core.catalog import FAMILIES
from core.contract import Artifact, Executor, RunContext, RunResult
from core.pipelines.loader import denoise, image_result, open_image, png
from core.pipelines.preprocess import PREPROCESSORS
from core.registry import ModelEntry
from core.schemas import ControlNetRequest
from core.warm import Warm


def run(request: ControlNetRequest, model: ModelEntry, ctx: RunContext, warm: Warm) -> RunResult:
    import diffusers

    # 1. load the base pipeline and the ControlNet (0 ms each when warm), activate this request's LoRAs
    base, load_ms = warm.pipelines.base(model)
    controlnet, cn_ms = warm.pipelines.controlnet(request.controlnet, model)
    warm.pipelines.apply_loras(model, base, request.loras, ctx)
    # 2. the family's ControlNet pipeline of the same components, with a fresh scheduler
    scheduler = warm.pipelines.scheduler(request.scheduler, base, model)
    cls = getattr(diffusers, FAMILIES[model.pipeline_class].controlnet_class)
    pipe = cls.from_pipe(base, controlnet=controlnet, scheduler=scheduler)
    # 3. the control image, preprocessed (edges, depth, or as given)
    control = open_image(ctx, request.control_image, (request.width, request.height))
    control = PREPROCESSORS[request.preprocess](control, request, warm)
    # 4. denoise and encode, the control image beside the outputs
    denoised = denoise(
        pipe,
        request,
        ctx,
        warm.pipelines.fast,
        image=control,
        controlnet_conditioning_scale=request.controlnet_conditioning_scale,
        num_images_per_prompt=request.num_images,
        output_type="pil",
    )
    meta = {"width": control.width, "height": control.height, "role": "control_image"}
    return image_result(
        denoised, request, model, load_ms + cn_ms, extra=[Artifact(png(control), "image/png", "png", meta)]
    )


EXECUTOR: Executor[ControlNetRequest] = Executor(run)
