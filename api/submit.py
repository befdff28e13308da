"""Turning a validated request into a queued job: model and task checks, defaults, image inputs, idempotency."""

from __future__ import annotations

import hashlib
import json
import secrets

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.state import Backends
from core.errors import InputError
from core.images import decode_data_uri, inspect_image
from core.jobs import lifecycle
from core.registry import ModelEntry
from core.schemas import MAX_SEED, JobRecord, JobType, ModelRef
from core.storage import upload_key
from core.tenant_models import tenant_model_entry

IMAGE_FIELDS = ("image", "mask_image", "control_image")


def job_view(job: JobRecord, b: Backends, base_url: str) -> dict:
    """The public envelope, with output keys turned into URLs the client can GET."""
    data = job.public()
    for item in data["output"]:
        key = item.pop("key", None)
        if key:
            item["url"] = b.storage.url(key, base_url)
    return data


def check_image_ref(b: Backends, tenant: str, field: str, ref: str) -> tuple[int, int]:
    if ref.startswith("data:"):
        raw = decode_data_uri(ref, field, b.settings.max_body_bytes)
        w, h, _ = inspect_image(raw, field, b.settings.max_image_pixels)
        return w, h
    try:
        meta = json.loads(b.storage.get(upload_key(tenant, ref) + ".json"))
    except KeyError:
        raise InputError(f"unknown upload {ref!r}", field=field, code="unknown_upload") from None
    if not meta.get("width"):
        raise InputError(f"upload {ref!r} is not an image", field=field, code="invalid_image")
    return meta["width"], meta["height"]


def _fill_generation_defaults(entry: ModelEntry, data: dict, job_type: JobType) -> None:
    for dim in ("width", "height"):
        if data.get(dim) is None:
            data[dim] = getattr(entry, dim)
        elif data[dim] % entry.size_multiple:
            raise InputError(f"must be a multiple of {entry.size_multiple} for model {entry.id!r}", field=dim)
    if data.get("num_inference_steps") is None:
        data["num_inference_steps"] = entry.default_num_inference_steps
    elif data["num_inference_steps"] > entry.max_inference_steps:
        raise InputError(f"at most {entry.max_inference_steps} for model {entry.id!r}", field="num_inference_steps")
    if data.get("guidance_scale") is None:
        data["guidance_scale"] = entry.default_guidance_scale
    if data.get("scheduler") is None:
        data["scheduler"] = entry.default_scheduler
    elif data["scheduler"] not in entry.schedulers:
        raise InputError(f"unknown scheduler {data['scheduler']!r} for model {entry.id!r}; expected one of {entry.schedulers}",
                         field="scheduler")
    if entry.kind.startswith("engine"):
        _check_engine_request(entry, data)


def _check_engine_request(entry: ModelEntry, data: dict) -> None:
    if data["width"] != data["height"]:
        raise InputError("engine models draw square images; width must equal height", field="height")
    if data["width"] > 4 * entry.width:
        raise InputError(f"at most {4 * entry.width} for model {entry.id!r}", field="width")
    if data.get("loras"):
        raise InputError(f"model {entry.id!r} takes no LoRAs", field="loras", code="unsupported_task")
    if data.get("negative_prompt"):
        raise InputError(f"model {entry.id!r} takes no negative prompt", field="negative_prompt")
    if entry.labels is not None:
        from core.ddpm.labels import resolve_label  # torch-free

        data["prompt"] = entry.labels[resolve_label(entry.labels, data.get("prompt", ""))]
    elif data.get("prompt"):
        raise InputError(f"model {entry.id!r} is unconditional and takes no prompt", field="prompt")


def _check_diffusers_request(b: Backends, tenant: str, entry: ModelEntry, data: dict, job_type: JobType) -> None:
    from core.pipelines.families import LORA_SERVABLE, valid_num_frames

    for i, ref in enumerate(data.get("loras") or []):
        if entry.pipeline_class not in LORA_SERVABLE:
            raise InputError(f"model {entry.id!r} takes no LoRAs", field="loras", code="unsupported_task")
        record = b.store.registration(tenant, "lora", ref["name"])
        if record is None and b.registry.lora(ref["name"]) is None:
            raise InputError(f"unknown LoRA {ref['name']!r}", field=f"loras.{i}.name", code="unknown_lora")
        if record is not None and record.get("base_pipeline_class") != entry.pipeline_class:
            raise InputError(f"LoRA {ref['name']!r} was trained for a {record.get('base_pipeline_class')}, "
                             f"not for {entry.id!r}", field=f"loras.{i}.name")
    if job_type == JobType.controlnet:
        b.registry.controlnet(data["controlnet"])
    if job_type == JobType.video:
        if data.get("num_frames") is None:
            data["num_frames"] = entry.default_num_frames or 17
        why = valid_num_frames(entry.pipeline_class, data["num_frames"])
        if why:
            raise InputError(why, field="num_frames")


def _check_training_name(b: Backends, name: str) -> None:
    try:
        b.registry.get(name)
    except InputError:
        return
    raise InputError(f"{name!r} is the name of a served model; choose another", field="name", code="name_taken")


def _check_zip_upload(b: Backends, tenant: str, upload_id: str) -> None:
    try:
        meta = json.loads(b.storage.get(upload_key(tenant, upload_id) + ".json"))
    except KeyError:
        raise InputError(f"unknown upload {upload_id!r}", field="dataset", code="unknown_upload") from None
    if meta.get("content_type") != "application/zip":
        raise InputError("the dataset must be a zip archive", field="dataset")


def _prepare_lora_training(b: Backends, tenant: str, data: dict) -> tuple[dict, ModelRef]:
    from core.pipelines.families import LORA_TRAINABLE

    try:
        entry = b.registry.get(data["base_model"])
    except InputError as e:
        raise InputError(e.message, field="base_model", code=e.code) from None
    if entry.pipeline_class not in LORA_TRAINABLE:
        raise InputError(f"model {entry.id!r} cannot be fine-tuned with LoRA here; trainable: {LORA_TRAINABLE}",
                         field="base_model", code="unsupported_task")
    if data["resolution"] % 8:
        raise InputError("must be a multiple of 8", field="resolution")
    _check_zip_upload(b, tenant, data["dataset"])
    return data, ModelRef(id=entry.id, sha256=entry.version)


def _prepare_ddpm_training(b: Backends, tenant: str, data: dict) -> tuple[dict, None]:
    _check_training_name(b, data["name"])
    if data["dataset"] != "digits":
        _check_zip_upload(b, tenant, data["dataset"])
    return data, None


def _prepare_generation(b: Backends, tenant: str, job_type: JobType, data: dict, dims: dict) -> tuple[dict, ModelRef]:
    entry = tenant_model_entry(b.store, tenant, data["model"]) or b.registry.get(data["model"])
    entry.require_task(job_type)
    first_image = next(iter(dims.values()), None)
    if first_image and data.get("width") is None and data.get("height") is None:
        # an image task answers at the size of its input image (rounded down to what the model accepts)
        m = entry.size_multiple
        data["width"], data["height"] = (max(m, v - v % m) for v in first_image)
    _fill_generation_defaults(entry, data, job_type)
    if entry.kind == "diffusers":
        _check_diffusers_request(b, tenant, entry, data, job_type)
    return data, ModelRef(id=entry.id, sha256=entry.version)


def prepare(b: Backends, tenant: str, job_type: JobType, body: BaseModel) -> tuple[dict, ModelRef | None]:
    """Validate what pydantic cannot (models, tasks, images, labels, datasets) and fill every default into the
    input, the seed included (null: a random one, recorded so the job can be reproduced)."""
    data = body.model_dump(mode="json")
    dims = {f: check_image_ref(b, tenant, f, data[f]) for f in IMAGE_FIELDS if data.get(f)}
    if "mask_image" in dims and dims["mask_image"] != dims["image"]:
        raise InputError(f"mask_image is {dims['mask_image']}, image is {dims['image']}: sizes must match", field="mask_image")
    if job_type == JobType.lora_training:
        data, model = _prepare_lora_training(b, tenant, data)
    elif job_type == JobType.ddpm_training:
        data, model = _prepare_ddpm_training(b, tenant, data)
    else:
        data, model = _prepare_generation(b, tenant, job_type, data, dims)
    if data.get("seed") is None:
        data["seed"] = secrets.randbelow(MAX_SEED + 1 - 8)  # image i uses seed + i
    return data, model


async def submit(request: Request, b: Backends, tenant: str, job_type: JobType, body: BaseModel) -> JSONResponse:
    idem_key = request.headers.get("idempotency-key")
    idempotency = None
    if idem_key is not None:
        if not 1 <= len(idem_key) <= 255:
            raise InputError("must be 1 to 255 characters", field="Idempotency-Key")
        body_hash = hashlib.sha256(f"{job_type.value}\n{body.model_dump_json()}".encode()).hexdigest()
        idempotency = (idem_key, body_hash)
    data, model = await run_in_threadpool(prepare, b, tenant, job_type, body)
    job = lifecycle.new_job(job_type, data, tenant, model)
    job, created = await run_in_threadpool(lifecycle.submit, b.store, b.queue, job, idempotency)
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(job_view(job, b, str(request.base_url)), status_code=202, headers=headers)
