"""Text (a label) to image with the from-scratch engine (``core/ddpm``), alone or several requests in one batch."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from core import previews
from core.contract import Artifact, Batching, Executor, RunContext, RunResult
from core.errors import DeadlineExceeded, JobCancelled, LeaseLost
from core.pipelines.building import BUILDING
from core.registry import ModelEntry
from core.schemas import ModelRef, Txt2ImgRequest
from core.warm import Warm


def encode(
    images, request: Txt2ImgRequest, engine, model: ModelEntry, load_ms: float, inference_ms: float, versions: dict
) -> RunResult:
    """PNG per image, image i with ``seed + i``."""
    from core.ddpm.pipeline import to_pil_images

    label = engine.labels[engine.label_index(request.prompt)] if model.labels else None
    artifacts = []
    for i, im in enumerate(to_pil_images(images)):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        meta = {"width": im.width, "height": im.height, "seed": request.seed + i}
        if label is not None:
            meta["label"] = label
        artifacts.append(Artifact(buf.getvalue(), "image/png", "png", meta))
    return RunResult(artifacts, load_ms, inference_ms, ModelRef(id=model.id, sha256=model.version), versions)


def run(request: Txt2ImgRequest, model: ModelEntry, ctx: RunContext, warm: Warm) -> RunResult:
    # 1. load (0 ms when warm)
    engine, load_ms = warm.load_engine(model)
    # 2. denoise, reporting every step (progress raises JobCancelled when asked to stop), previews of image 0
    every = request.preview_every

    def preview(step: int, total: int, x0) -> None:
        if previews.due(step, total, every):
            ctx.preview(step, total, previews.engine_png(x0[0]))

    cache = engine.step_cache(request.cache.method, request.cache.value) if request.cache else None
    t0 = time.perf_counter()
    with BUILDING:  # a compiled network traces at a new size; the noise is drawn in the default dtype (building.py)
        images = engine.generate(
            labels=[request.prompt] if model.labels else None,
            num_images=request.num_images,
            num_inference_steps=request.num_inference_steps,
            sampler=request.scheduler,
            guidance_scale=request.guidance_scale,
            seed=request.seed,
            size=request.width or model.width,
            callback=ctx.progress,
            preview=preview if every else None,
            step_cache=cache,
        )
    # 3. encode
    inference_ms = (time.perf_counter() - t0) * 1000
    return encode(images, request, engine, model, load_ms, inference_ms, cached(warm.engine_versions(engine), cache))


def cached(versions: dict[str, str], cache) -> dict[str, str]:
    """The versions a result records, with the step cache's settings and what it reused. A step cache calls the
    network's parts eagerly (all but DeepCache at interval 1, which calls the network itself): such a run records
    ``engine_compiled`` as off even on a compiled model."""
    if cache is None:
        return versions
    eager = not (cache.method == "deep" and cache.interval == 1)
    compiled = versions.get("engine_compiled", "off")
    if eager and compiled != "off":
        compiled = "off (the step cache runs the network's parts eagerly)"
    return {**versions, "engine_compiled": compiled, "step_cache": cache.describe()}


def batch_key(request: Txt2ImgRequest, model: ModelEntry) -> tuple | None:
    """Requests with the same key share one denoising loop; None: this one runs alone."""
    from core.catalog import CACHE_METHODS
    from core.ddpm.pipeline import BATCHABLE_SAMPLERS

    if request.scheduler not in BATCHABLE_SAMPLERS:
        return None
    cache = request.cache
    if cache is not None and CACHE_METHODS[cache.method].adaptive:
        return None  # it decides each step from the batch's numbers: alone, its pixels are its own
    return (
        model.id,
        model.version,
        request.width,
        request.num_inference_steps,
        request.scheduler,
        request.guidance_scale,
        (cache.method, cache.value) if cache else None,
    )


def run_batch(
    requests: list[Txt2ImgRequest], model: ModelEntry, ctxs: list[RunContext], warm: Warm
) -> list[RunResult | BaseException]:
    """Several requests of one ``batch_key`` in one batch. Progress goes to each job; a job canceled, past its
    deadline or no longer ours leaves with that outcome at the next step while the others go on."""
    from core.ddpm.pipeline import generate_batch
    from core.ddpm.samplers import Cancelled

    # 1. load (0 ms when warm)
    engine, load_ms = warm.load_engine(model)
    # 2. one job's bad input fails that job alone
    outcomes: list[RunResult | BaseException | None] = [_bad_label(engine, model, r) for r in requests]
    members = [i for i, o in enumerate(outcomes) if o is None]
    if not members:
        return outcomes
    # 3. denoise together, each image from its own seed
    r0 = requests[members[0]]
    draws = [
        ([requests[i].prompt] if model.labels else None, requests[i].num_images, requests[i].seed) for i in members
    ]
    wants_previews = any(requests[i].preview_every for i in members)
    cache = engine.step_cache(r0.cache.method, r0.cache.value) if r0.cache else None  # one decision per step
    t0 = time.perf_counter()
    try:
        with BUILDING:  # as in run
            images = generate_batch(
                engine,
                draws,
                r0.num_inference_steps,
                r0.scheduler,
                r0.guidance_scale,
                r0.width or model.width,
                callback=_progress_of(ctxs, outcomes),
                preview=_previews_of(requests, ctxs, outcomes, members) if wants_previews else None,
                step_cache=cache,
            )
    except Cancelled:
        return outcomes  # every job left the batch
    except Exception as e:  # noqa: BLE001 - the batch failed: each job records why
        return [o if o is not None else e for o in outcomes]
    inference_ms = (time.perf_counter() - t0) * 1000
    # 4. encode each job's images (a job that left the batch keeps its outcome)
    versions = cached(warm.engine_versions(engine), cache)
    for i, im in zip(members, images, strict=True):
        if outcomes[i] is None:
            outcomes[i] = encode(im, requests[i], engine, model, load_ms, inference_ms, versions)
    return outcomes


def _bad_label(engine, model: ModelEntry, request: Txt2ImgRequest) -> BaseException | None:
    """The error a request's label ends its job with, or None (a label-less model takes any prompt)."""
    try:
        if model.labels:
            engine.label_index(request.prompt)
    except ValueError as e:
        return e
    return None


def _progress_of(ctxs: list[RunContext], outcomes: list) -> Callable[[int, int], bool]:
    """The batch's step callback: each job still in it is told the step; one canceled, past its deadline or no
    longer ours leaves with that outcome. Returns False once nobody is left (the batch stops)."""

    def progress(step: int, total: int) -> bool:
        for i, ctx in enumerate(ctxs):
            if outcomes[i] is None:
                try:
                    ctx.progress(step, total)
                except (JobCancelled, LeaseLost, DeadlineExceeded) as e:
                    outcomes[i] = e
        return any(o is None for o in outcomes)

    return progress


def _previews_of(requests: list[Txt2ImgRequest], ctxs: list[RunContext], outcomes: list, members: list[int]):
    """The batch's preview callback: each job still in it that asked gets its first image's x0."""
    firsts = [sum(requests[j].num_images for j in members[:k]) for k in range(len(members))]

    def preview(step: int, total: int, x0) -> None:
        for i, first in zip(members, firsts, strict=True):
            if outcomes[i] is None and previews.due(step, total, requests[i].preview_every):
                ctxs[i].preview(step, total, previews.engine_png(x0[first]))

    return preview


EXECUTOR: Executor[Txt2ImgRequest] = Executor(run, Batching(batch_key, run_batch))
