"""ControlNet-conditioned generation with a diffusers pipeline; ``preprocess: canny`` turns the control image into
its edge map (OpenCV), returned as an extra output."""

from __future__ import annotations

import numpy as np

from core.catalog import FAMILIES
from core.contract import Artifact, RunContext, RunResult
from core.pipelines.loader import denoise, image_result, open_image, png
from core.registry import ModelEntry
from core.schemas import ControlNetRequest


def canny(image, low: int, high: int):
    import cv2
    from PIL import Image

    edges = cv2.Canny(np.asarray(image), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def run(request: ControlNetRequest, model: ModelEntry, ctx: RunContext, engines) -> RunResult:
    import diffusers

    # 1. load the base pipeline and the ControlNet (0 ms each when warm), activate this request's LoRAs
    base, load_ms = engines.pipelines.base(model)
    controlnet, cn_ms = engines.pipelines.controlnet(request.controlnet, model)
    engines.pipelines.apply_loras(model, base, request.loras, ctx)
    # 2. the family's ControlNet pipeline of the same components, with a fresh scheduler
    scheduler = engines.pipelines.scheduler(request.scheduler, base, model)
    cls = getattr(diffusers, FAMILIES[model.pipeline_class].controlnet_class)
    pipe = cls.from_pipe(base, controlnet=controlnet, scheduler=scheduler)
    # 3. the control image, preprocessed
    control = open_image(ctx, request.control_image, (request.width, request.height))
    if request.preprocess == "canny":
        control = canny(control, request.canny_low_threshold, request.canny_high_threshold)
    # 4. denoise and encode, the control image beside the outputs
    out, inference_ms = denoise(
        pipe,
        request,
        ctx,
        engines.pipelines.fast,
        image=control,
        controlnet_conditioning_scale=request.controlnet_conditioning_scale,
        num_images_per_prompt=request.num_images,
        output_type="pil",
    )
    meta = {"width": control.width, "height": control.height, "role": "control_image"}
    return image_result(
        out, request, model, load_ms + cn_ms, inference_ms, extra=[Artifact(png(control), "image/png", "png", meta)]
    )
