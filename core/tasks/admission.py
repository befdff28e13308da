"""Admission: a typed request in, the complete typed request out (every default filled from the model entry, the
seed drawn, the timeout filled), built and validated by the same model the worker parses. Torch-free; the gateway
runs it before it queues a job (``admit``), and every task's own step (``Task.admit``) is made of the checks here.

What pydantic cannot check is checked here, each refusal naming its field: the model exists and does the task, its
size rule, schedulers, labels and step cap (``core/catalog.py``, stated by GET /v1/models), LoRAs, images,
datasets, the limits of the task's family, names.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError

from core import uploads, webhooks
from core.catalog import LIMITS, LORA_SERVABLE, MAX_VIDEO_VOLUME, ModelKind, denoising_steps
from core.errors import InputError
from core.jobs.schedule import LEVEL, PRIORITIES
from core.jobs.store import JobStore
from core.registry import ModelEntry, ModelRegistry
from core.schemas import MAX_SEED, GenerationBase, ModelRef
from core.storage import Storage
from core.tenant_models import registration, tenant_model_entry
from core.tenants import Tenants

if TYPE_CHECKING:
    from core.tasks.base import Admitted, Task

M = TypeVar("M", bound=BaseModel)


@dataclass
class Inputs:
    """What admission reads: the job store (tenants' registrations), storage (uploads), the served models, and the
    input limits of this deployment."""

    store: JobStore
    storage: Storage
    registry: ModelRegistry
    max_body_bytes: int
    max_image_pixels: int
    job_ttl_s: float
    allow_private_webhooks: bool = False
    grid_max_total_steps: int = 4096  # denoising steps over all of a grid's cells (GRID_MAX_TOTAL_STEPS)
    tenants: Tenants = field(default_factory=Tenants)  # each tenant's ceiling on priority (TENANTS_CONFIG)


def updated(request: M, **changes) -> M:
    """``request`` with ``changes``, validated again by its own model (``model_copy`` would not check them)."""
    if not changes:
        return request
    try:
        return type(request).model_validate({**request.model_dump(), **changes})
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or next(iter(changes))
        raise InputError(err["msg"], field=field) from None


# -- 1. every task: webhook, images, the task's own step, timeout, seed, inline images saved ---------------------
def admit(v: Inputs, tenant: str, task: Task, body: BaseModel) -> tuple[BaseModel, ModelRef | None, dict[str, str]]:
    """The complete request of a job of ``task``, or an InputError naming the field. Inline images are saved as
    uploads last, once the request is known good: the request keeps their ids, the third value their sha256.
    Returns (request, model, input sha256 by field)."""
    # 1. the webhook: http(s) to public addresses only (WEBHOOK_ALLOW_PRIVATE: private too), checked first
    webhook = getattr(body, "webhook", None)
    if webhook:
        webhooks.check_target(webhook, v.allow_private_webhooks)
    # 2. images: format, size, and the mask the image's size
    images = {
        f: uploads.check_image(v.storage, tenant, f, getattr(body, f), v.max_body_bytes, v.max_image_pixels)
        for f in task.images
        if getattr(body, f, None)
    }
    dims = {f: (im.width, im.height) for f, im in images.items()}
    if "mask_image" in dims and dims["mask_image"] != dims["image"]:
        raise InputError(
            f"mask_image is {dims['mask_image']}, image is {dims['image']}: sizes must match", field="mask_image"
        )
    # 3. the task's own step: the model's defaults and rules
    done: Admitted = task.admit(v, tenant, body, next(iter(dims.values()), None))
    request = done.request
    # 4. the priority (the task's default; at most the tenant's ceiling), the timeout (default and cap: the
    # family's), the seed (random when null: image i uses seed + i)
    ceiling = v.tenants.of(tenant).max_priority
    default = PRIORITIES[max(LEVEL[task.priority], LEVEL[ceiling])]  # a tenant capped at low gets low by default
    changes: dict = {"priority": request.priority or default}
    if LEVEL[changes["priority"]] < LEVEL[ceiling]:
        raise InputError(f"at most {ceiling} for this tenant (its max_priority)", field="priority")
    lim = LIMITS[done.limits]
    if request.timeout_s is None:
        changes["timeout_s"] = lim.default_timeout_s
    elif request.timeout_s > lim.max_timeout_s:
        raise InputError(f"at most {lim.max_timeout_s} for {done.limits} jobs", field="timeout_s")
    if "seed" in type(request).model_fields:
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1 - 8)
        last = seed + getattr(request, "num_images", 1) - 1
        if last > MAX_SEED:  # every image's seed can be asked for again alone
            raise InputError(f"seed + num_images - 1 is {last}, over the largest seed {MAX_SEED}", field="seed")
        changes["seed"] = seed
    # 5. inline images saved as uploads (the request keeps their ids)
    for f, im in images.items():
        changes[f] = uploads.save_inline(v.store.retention, v.storage, tenant, im, v.job_ttl_s)
    return updated(request, **changes), done.model, {f: im.sha256 for f, im in images.items()}


# -- 2. generation tasks: the model's entry, its defaults and rules ------------------------------------------------
G = TypeVar("G", bound=GenerationBase)
Extra = Callable[[Inputs, ModelEntry, G], G]


def model_entry(v: Inputs, tenant: str, model_id: str, field: str = "model") -> ModelEntry:
    """The tenant's own model of that name, else a served one."""
    try:
        return tenant_model_entry(v.store.registrations, tenant, model_id) or v.registry.get(model_id)
    except InputError as e:
        raise InputError(e.message, field=field, code=e.code) from None


def generation(
    v: Inputs, tenant: str, task: Task, request: G, image_size: tuple[int, int] | None, extra: Extra | None = None
) -> Admitted[G]:
    """Admission of a generation task: the model does the task; size, steps, guidance and scheduler filled from its
    entry and checked against its rules; an engine model's label; LoRAs; the task's ``extra`` checks; the family's
    limits."""
    from core.tasks.base import Admitted

    entry = model_entry(v, tenant, request.model)
    entry.require_task(task.type)
    request = defaults(entry, task, request, image_size)
    request = step_cache(entry, request)
    if entry.kind == ModelKind.engine:
        request = engine_request(entry, request)
    else:
        check_loras(v, tenant, entry, request)
    if extra is not None:
        request = extra(v, entry, request)
    family = task.limits_for(entry)
    check_family_limits(family, request)
    return Admitted(request, ModelRef(id=entry.id, sha256=entry.version), family)


def defaults(entry: ModelEntry, task: Task, request: G, image_size: tuple[int, int] | None) -> G:
    """Size by the model's size rule (a missing side: the native one, for a square-only model the other side given;
    an image task given neither: its input image's size rounded down to the rule), steps, guidance, scheduler."""
    rule = entry.size
    w, h = request.width, request.height
    if w is None and h is None and image_size is not None:
        w, h = rule.round_down(*image_size)
    elif rule.square_only:
        w, h = (w if w is not None else h), (h if h is not None else w)
    w, h = entry.width if w is None else w, entry.height if h is None else h
    broken = rule.why_not(w, h)
    if broken:
        field, why = broken
        raise InputError(f"{why} for model {entry.id!r} (see its size rule in GET /v1/models)", field=field)
    steps = request.num_inference_steps
    if steps is None:
        steps = entry.default_num_inference_steps
    elif steps > entry.max_inference_steps:
        raise InputError(f"at most {entry.max_inference_steps} for model {entry.id!r}", field="num_inference_steps")
    schedulers = entry.schedulers_for(task.type.value)
    scheduler = request.scheduler or entry.default_scheduler
    if scheduler not in schedulers:
        raise InputError(
            f"unknown scheduler {scheduler!r} for {task.type.value} with model {entry.id!r}; "
            f"expected one of {schedulers}",
            field="scheduler",
        )
    guidance = entry.default_guidance_scale if request.guidance_scale is None else request.guidance_scale
    return updated(request, width=w, height=h, num_inference_steps=steps, scheduler=scheduler, guidance_scale=guidance)


def step_cache(entry: ModelEntry, request: G) -> G:
    """A step cache the model takes, its knob filled with the model's default when left out."""
    given = request.cache
    if given is None:
        return request
    offered = {c.method: c for c in entry.cache_methods}
    if given.method not in offered:
        raise InputError(
            f"model {entry.id!r} takes no {given.method!r} step cache; it takes {sorted(offered) or 'none'} "
            "(see cache_methods in GET /v1/models)",
            field="cache",
            code="unsupported_task",
        )
    if given.value is None:
        return updated(request, cache=offered[given.method])
    return request


def engine_request(entry: ModelEntry, request: G) -> G:
    """Our engine: no LoRA, no negative prompt; a class-conditional model's prompt names a label (its canonical
    name is kept), an unconditional one takes none."""
    if getattr(request, "loras", None):
        raise InputError(f"model {entry.id!r} takes no LoRAs", field="loras", code="unsupported_task")
    if request.negative_prompt:
        raise InputError(f"model {entry.id!r} takes no negative prompt", field="negative_prompt")
    if entry.labels is not None:
        from core.ddpm.labels import resolve_label  # torch-free

        return updated(request, prompt=entry.labels[resolve_label(entry.labels, request.prompt)])
    if request.prompt:
        raise InputError(f"model {entry.id!r} is unconditional and takes no prompt", field="prompt")
    return request


def check_loras(v: Inputs, tenant: str, entry: ModelEntry, request: GenerationBase) -> None:
    """Each LoRA exists for this tenant (its own, else a served one) and was trained for this model's family."""
    for i, ref in enumerate(getattr(request, "loras", ())):
        if entry.pipeline_class not in LORA_SERVABLE:
            raise InputError(f"model {entry.id!r} takes no LoRAs", field="loras", code="unsupported_task")
        record = registration(v.store.registrations, tenant, "lora", ref.name)
        if record is None and v.registry.lora(ref.name) is None:
            raise InputError(f"unknown LoRA {ref.name!r}", field=f"loras.{i}.name", code="unknown_lora")
        if record is not None and record.base_pipeline_class != entry.pipeline_class:
            raise InputError(
                f"LoRA {ref.name!r} was trained for a {record.base_pipeline_class}, not for {entry.id!r}",
                field=f"loras.{i}.name",
            )


def check_strength(task: Task) -> Extra:
    """Image-to-image and inpainting: ``strength`` leaves at least one denoising step to run (diffusers models)."""

    def check(v: Inputs, entry: ModelEntry, request: G) -> G:
        if entry.kind != ModelKind.diffusers:
            return request
        steps, strength = request.num_inference_steps, request.strength
        scheduler = entry.scheduler_class_of(request.scheduler)
        if denoising_steps(entry.pipeline_class, task.type.value, steps, strength, scheduler) < 1:
            raise InputError(
                f"strength {strength} at num_inference_steps {steps} leaves no denoising step to run; raise strength "
                "or num_inference_steps",
                field="strength",
            )
        return request

    return check


def check_family_limits(family: str, request: GenerationBase) -> None:
    lim = LIMITS[family]
    if request.width * request.height > lim.max_pixels:
        raise InputError(
            f"{request.width}x{request.height} is over {lim.max_pixels:,} pixels for {family} models",
            field="width",
            code="too_expensive",
        )
    if request.num_inference_steps > lim.max_steps:
        raise InputError(f"at most {lim.max_steps} for {family} models", field="num_inference_steps")
    if getattr(request, "num_images", 1) > lim.max_images:
        raise InputError(f"at most {lim.max_images} for {family} models", field="num_images")
    frames = getattr(request, "num_frames", None)
    if frames is not None and frames * request.width * request.height > MAX_VIDEO_VOLUME:
        raise InputError(
            f"num_frames x width x height is over {MAX_VIDEO_VOLUME:,}", field="num_frames", code="too_expensive"
        )


# -- 3. training tasks ------------------------------------------------------------------------------------------------
def check_training_work(steps: int, batch: int, resolution: int, family: str) -> None:
    cap = LIMITS[family].max_work
    if steps * batch * resolution**2 > cap:
        raise InputError(
            f"steps x batch x resolution^2 = {steps * batch * resolution**2:,} is over the cap of {cap:,} "
            "for one training job; lower one of them",
            field="max_train_steps",
            code="too_expensive",
        )


def check_new_name(v: Inputs, name: str) -> None:
    """A model a job trains may not take a served model's name."""
    try:
        v.registry.get(name)
    except InputError:
        return
    raise InputError(f"{name!r} is the name of a served model; choose another", field="name", code="name_taken")


def check_zip_upload(v: Inputs, tenant: str, upload_id: str) -> None:
    meta = uploads.metadata(v.storage, tenant, upload_id, "dataset")
    if meta.get("content_type") != "application/zip":
        raise InputError("the dataset must be a zip archive", field="dataset")
