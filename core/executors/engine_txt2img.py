"""Text (a label) to image with the from-scratch engine (``core/ddpm``)."""

from __future__ import annotations

import io
import time

from core.contract import Artifact, RunContext, RunResult
from core.registry import ModelEntry
from core.schemas import ModelRef, Txt2ImgRequest


def run(request: Txt2ImgRequest, model: ModelEntry, ctx: RunContext, engines) -> RunResult:
    from core.ddpm.pipeline import to_pil_images

    # 1. load (0 ms when warm)
    engine, load_ms = engines.load_engine(model)
    # 2. denoise, reporting every step (progress raises JobCancelled when asked to stop)
    t0 = time.perf_counter()
    images = engine.generate(
        labels=[request.prompt] if model.labels else None,
        num_images=request.num_images,
        num_inference_steps=request.num_inference_steps,
        sampler=request.scheduler,
        guidance_scale=request.guidance_scale,
        seed=request.seed,
        size=request.width or model.width,
        callback=ctx.progress,
    )
    inference_ms = (time.perf_counter() - t0) * 1000
    # 3. encode, image i with seed + i
    label = engine.labels[engine.label_index(request.prompt)] if model.labels else None
    artifacts = []
    for i, im in enumerate(to_pil_images(images)):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        meta = {"width": im.width, "height": im.height, "seed": request.seed + i}
        if label is not None:
            meta["label"] = label
        artifacts.append(Artifact(buf.getvalue(), "image/png", "png", meta))
    return RunResult(artifacts, load_ms, inference_ms, ModelRef(id=model.id, sha256=model.version), engines.versions)
