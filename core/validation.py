"""Turning a typed request into a job's input, torch-free: what pydantic cannot check (the model exists and does
the task, labels, images, datasets, the limits of the model's family, LoRA compatibility, frame rules, names) and
every default filled in, the seed and timeout included. The gateway calls it before it queues a job. The rules that
depend on the model (sizes, schedulers, counts, frames) are its entry's, from the catalog (``core/catalog.py``), and
GET /v1/models states them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from pydantic import BaseModel

from core import uploads, webhooks
from core.catalog import (
    LIMITS,
    LORA_SERVABLE,
    LORA_TRAINABLE,
    MAX_VIDEO_VOLUME,
    MODEL_PREPROCESSORS,
    ModelKind,
    denoising_steps,
    family_of,
    valid_num_frames,
)
from core.errors import InputError
from core.jobs.store import JobStore
from core.registry import ModelEntry, ModelRegistry
from core.schemas import MAX_SEED, JobType, ModelRef
from core.storage import Storage
from core.tenant_models import tenant_model_entry

IMAGE_FIELDS = ("image", "mask_image", "control_image")


@dataclass
class Inputs:
    """What validation reads: the job store (tenants' registrations), storage (uploads), the served models, and the
    input limits of this deployment."""

    store: JobStore
    storage: Storage
    registry: ModelRegistry
    max_body_bytes: int
    max_image_pixels: int
    job_ttl_s: float
    allow_private_webhooks: bool = False
    grid_max_total_steps: int = 4096  # denoising steps over all of a grid's cells (GRID_MAX_TOTAL_STEPS)


def _fill_size(entry: ModelEntry, data: dict, image_size: tuple[int, int] | None) -> None:
    """Width and height by the model's size rule (core/catalog.py): a missing one is the native size (for a
    square-only model: the other one given); an image task given neither answers at its input image's size,
    rounded down to the size step and capped at the largest it draws."""
    rule = entry.size
    w, h = data.get("width"), data.get("height")
    if w is None and h is None and image_size is not None:
        w, h = rule.round_down(*image_size)
    elif rule.square_only:
        w, h = (w if w is not None else h), (h if h is not None else w)
    data["width"] = entry.width if w is None else w
    data["height"] = entry.height if h is None else h
    broken = rule.why_not(data["width"], data["height"])
    if broken:
        field, why = broken
        raise InputError(f"{why} for model {entry.id!r} (see its size rule in GET /v1/models)", field=field)


def _fill_generation_defaults(entry: ModelEntry, data: dict, job_type: JobType, image_size) -> None:
    _fill_size(entry, data, image_size)
    if data.get("num_inference_steps") is None:
        data["num_inference_steps"] = entry.default_num_inference_steps
    elif data["num_inference_steps"] > entry.max_inference_steps:
        raise InputError(f"at most {entry.max_inference_steps} for model {entry.id!r}", field="num_inference_steps")
    if data.get("guidance_scale") is None:
        data["guidance_scale"] = entry.default_guidance_scale
    schedulers = entry.schedulers_for(job_type.value)
    if data.get("scheduler") is None:
        data["scheduler"] = entry.default_scheduler
    elif data["scheduler"] not in schedulers:
        raise InputError(
            f"unknown scheduler {data['scheduler']!r} for {job_type.value} with model {entry.id!r}; "
            f"expected one of {schedulers}",
            field="scheduler",
        )
    if data.get("strength") is not None and entry.kind == ModelKind.diffusers:
        steps, strength = data["num_inference_steps"], data["strength"]
        scheduler = entry.scheduler_class_of(data["scheduler"])
        if denoising_steps(entry.pipeline_class, job_type.value, steps, strength, scheduler) < 1:
            raise InputError(
                f"strength {strength} at num_inference_steps {steps} leaves no denoising step to run; raise strength "
                "or num_inference_steps",
                field="strength",
            )
    if data.get("num_images", 1) > entry.max_images_for(job_type.value):
        raise InputError(f"at most {entry.max_images_for(job_type.value)} for {job_type.value} with model "
                         f"{entry.id!r}", field="num_images")  # fmt: skip
    if entry.kind == ModelKind.engine:
        _check_engine_request(entry, data)


def _check_engine_request(entry: ModelEntry, data: dict) -> None:
    if data.get("loras"):
        raise InputError(f"model {entry.id!r} takes no LoRAs", field="loras", code="unsupported_task")
    if data.get("negative_prompt"):
        raise InputError(f"model {entry.id!r} takes no negative prompt", field="negative_prompt")
    if entry.labels is not None:
        from core.ddpm.labels import resolve_label  # torch-free

        data["prompt"] = entry.labels[resolve_label(entry.labels, data.get("prompt", ""))]
    elif data.get("prompt"):
        raise InputError(f"model {entry.id!r} is unconditional and takes no prompt", field="prompt")


def _check_diffusers_request(v: Inputs, tenant: str, entry: ModelEntry, data: dict, job_type: JobType) -> None:
    for i, ref in enumerate(data.get("loras") or []):
        if entry.pipeline_class not in LORA_SERVABLE:
            raise InputError(f"model {entry.id!r} takes no LoRAs", field="loras", code="unsupported_task")
        record = v.store.registrations.registration(tenant, "lora", ref["name"])
        if record is None and v.registry.lora(ref["name"]) is None:
            raise InputError(f"unknown LoRA {ref['name']!r}", field=f"loras.{i}.name", code="unknown_lora")
        if record is not None and record.get("base_pipeline_class") != entry.pipeline_class:
            raise InputError(
                f"LoRA {ref['name']!r} was trained for a {record.get('base_pipeline_class')}, not for {entry.id!r}",
                field=f"loras.{i}.name",
            )
    if job_type == JobType.controlnet:
        v.registry.controlnet(data["controlnet"], entry)
        if data.get("preprocess") in MODEL_PREPROCESSORS:  # one that needs a model of its own: installed?
            v.registry.preprocessor(data["preprocess"])
    if job_type == JobType.video:
        if data.get("num_frames") is None:
            data["num_frames"] = entry.default_num_frames or 17
        why = valid_num_frames(entry.pipeline_class, data["num_frames"])
        if why:
            raise InputError(why, field="num_frames")
        if entry.max_num_frames is not None and data["num_frames"] > entry.max_num_frames:
            raise InputError(f"at most {entry.max_num_frames} for model {entry.id!r}", field="num_frames")


def _check_training_name(v: Inputs, name: str) -> None:
    try:
        v.registry.get(name)
    except InputError:
        return
    raise InputError(f"{name!r} is the name of a served model; choose another", field="name", code="name_taken")


def _check_zip_upload(v: Inputs, tenant: str, upload_id: str) -> None:
    meta = uploads.metadata(v.storage, tenant, upload_id, "dataset")
    if meta.get("content_type") != "application/zip":
        raise InputError("the dataset must be a zip archive", field="dataset")


def _prepare_lora_training(v: Inputs, tenant: str, data: dict) -> tuple[dict, ModelRef]:
    try:
        entry = v.registry.get(data["base_model"])
    except InputError as e:
        raise InputError(e.message, field="base_model", code=e.code) from None
    if entry.pipeline_class not in LORA_TRAINABLE:
        raise InputError(
            f"model {entry.id!r} cannot be fine-tuned with LoRA here; trainable: {LORA_TRAINABLE}",
            field="base_model",
            code="unsupported_task",
        )
    _check_training_work(data["max_train_steps"], data["train_batch_size"], data["resolution"], "lora_training")
    _check_zip_upload(v, tenant, data["dataset"])
    return data, ModelRef(id=entry.id, sha256=entry.version)


def _check_training_work(steps: int, batch: int, resolution: int, family: str) -> None:
    cap = LIMITS[family].max_work
    if steps * batch * resolution**2 > cap:
        raise InputError(
            f"steps x batch x resolution^2 = {steps * batch * resolution**2:,} is over the cap of {cap:,} "
            "for one training job; lower one of them",
            field="max_train_steps",
            code="too_expensive",
        )


def _prepare_ddpm_training(v: Inputs, tenant: str, data: dict) -> tuple[dict, None]:
    _check_training_name(v, data["name"])
    _check_training_work(data["max_train_steps"], data["train_batch_size"], data["resolution"], "ddpm_training")
    if data["dataset"] != "digits":
        _check_zip_upload(v, tenant, data["dataset"])
    return data, None


def _prepare_generation(
    v: Inputs, tenant: str, job_type: JobType, data: dict, dims: dict
) -> tuple[dict, ModelRef, str]:
    entry = tenant_model_entry(v.store, tenant, data["model"]) or v.registry.get(data["model"])
    entry.require_task(job_type)
    _fill_generation_defaults(entry, data, job_type, next(iter(dims.values()), None))
    if entry.kind == ModelKind.diffusers:
        _check_diffusers_request(v, tenant, entry, data, job_type)
    family = family_of(entry.kind, job_type == JobType.video)
    _check_family_limits(family, data)
    return data, ModelRef(id=entry.id, sha256=entry.version), family


def _prepare_grid(v: Inputs, tenant: str, data: dict) -> tuple[dict, ModelRef, str]:
    """The base request with every default filled (one seed for all cells unless seed is an axis), then every cell
    checked as the txt2img request it is; the default timeout grows with the number of cells."""
    from pydantic import ValidationError

    from core.schemas import GridRequest

    base = data["base"]
    if base.get("seed") is None:
        base["seed"] = secrets.randbelow(MAX_SEED + 1 - 8)
    data["base"], model, family = _prepare_generation(v, tenant, JobType.txt2img, base, {})
    try:
        cells = GridRequest.model_validate(data).cells()
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(f"a grid cell is not a valid request: {err['msg']}", field="x") from None
    total = sum(cell.num_inference_steps for _, _, cell in cells)
    if total > v.grid_max_total_steps:
        raise InputError(
            f"the grid's cells add up to {total:,} denoising steps, over the limit of {v.grid_max_total_steps:,}; "
            "fewer cells or steps",
            field="x",
            code="too_expensive",
        )
    for col, row, cell in cells:
        try:
            _prepare_generation(v, tenant, JobType.txt2img, cell.model_dump(mode="json"), {})
        except InputError as e:
            raise InputError(f"cell ({col}, {row}): {e.message}", field=e.field, code=e.code) from None
    if data.get("timeout_s") is None:
        lim = LIMITS[family]
        data["timeout_s"] = min(lim.max_timeout_s, lim.default_timeout_s * len(cells))
    return data, model, family


def _check_family_limits(family: str, data: dict) -> None:
    lim = LIMITS[family]
    if data["width"] * data["height"] > lim.max_pixels:
        raise InputError(
            f"{data['width']}x{data['height']} is over {lim.max_pixels:,} pixels for {family} models",
            field="width",
            code="too_expensive",
        )
    if data["num_inference_steps"] > lim.max_steps:
        raise InputError(f"at most {lim.max_steps} for {family} models", field="num_inference_steps")
    if data.get("num_images", 1) > lim.max_images:
        raise InputError(f"at most {lim.max_images} for {family} models", field="num_images")
    if family == "video" and data["num_frames"] * data["width"] * data["height"] > MAX_VIDEO_VOLUME:
        raise InputError(
            f"num_frames x width x height is over {MAX_VIDEO_VOLUME:,}", field="num_frames", code="too_expensive"
        )


def _fill_timeout(data: dict, family: str) -> None:
    lim = LIMITS[family]
    if data.get("timeout_s") is None:
        data["timeout_s"] = lim.default_timeout_s
    elif data["timeout_s"] > lim.max_timeout_s:
        raise InputError(f"at most {lim.max_timeout_s} for {family} jobs", field="timeout_s")


def prepare(v: Inputs, tenant: str, job_type: JobType, body: BaseModel) -> tuple[dict, ModelRef | None, dict]:
    """Validate what pydantic cannot (models, tasks, images, labels, datasets, the family's limits) and fill every
    default into the input, the seed and timeout included (a null seed: a random one, recorded so the job can be
    reproduced). Inline images are saved as uploads last, once the request is known good; the input keeps their
    ids and ``input_sha256`` their hashes. Returns (input, model, input_sha256)."""
    data = body.model_dump(mode="json")
    if data.get("webhook"):  # http(s) to public addresses only (WEBHOOK_ALLOW_PRIVATE: private too), checked first
        webhooks.check_target(data["webhook"], v.allow_private_webhooks)
    images = {
        f: uploads.check_image(v.storage, tenant, f, data[f], v.max_body_bytes, v.max_image_pixels)
        for f in IMAGE_FIELDS
        if data.get(f)
    }
    dims = {f: (im.width, im.height) for f, im in images.items()}
    if "mask_image" in dims and dims["mask_image"] != dims["image"]:
        raise InputError(
            f"mask_image is {dims['mask_image']}, image is {dims['image']}: sizes must match", field="mask_image"
        )
    if job_type == JobType.lora_training:
        data, model = _prepare_lora_training(v, tenant, data)
        family = "lora_training"
    elif job_type == JobType.ddpm_training:
        data, model = _prepare_ddpm_training(v, tenant, data)
        family = "ddpm_training"
    elif job_type == JobType.grid:
        data, model, family = _prepare_grid(v, tenant, data)
    else:
        data, model, family = _prepare_generation(v, tenant, job_type, data, dims)
    _fill_timeout(data, family)
    if job_type != JobType.grid and data.get("seed") is None:  # a grid's seed is its base request's
        data["seed"] = secrets.randbelow(MAX_SEED + 1 - 8)  # image i uses seed + i
    last = (data.get("seed") or 0) + data.get("num_images", 1) - 1
    if last > MAX_SEED:  # every image's seed can be asked for again alone
        raise InputError(f"seed + num_images - 1 is {last}, over the largest seed {MAX_SEED}", field="seed")
    for f, im in images.items():
        data[f] = uploads.save_inline(v.store, v.storage, tenant, im, v.job_ttl_s)
    return data, model, {f: im.sha256 for f, im in images.items()}
