"""AUTOMATIC1111's ``/sdapi/v1``, the subset its clients use (``webuiapi``, Krita and Photoshop plugins, bots).

A ``txt2img`` / ``img2img`` call is answered as A1111 answers it, synchronously: the request becomes ``n_iter`` jobs
of ``batch_size`` images (seeds ``seed + i``, as A1111's ``all_seeds``), submitted as the native routes submit them,
waited for on the event loop, and answered with the images as base64 PNG, the parameters, and ``info`` (a JSON
string: seeds, sampler, model, and what was ``ignored``). Fields are mapped, ignored (listed in ``info``) or refused
(422, naming the A1111 field) by the tables below. A call is all or nothing: its wait slot is taken before it
submits, its jobs are canceled when the wait fails (429, an error, the client gone), and one ``Idempotency-Key``
covers the call (job ``i`` is keyed ``{key}#{i}``).

1. The payload: A1111's field names; unknown fields are reported by name (at most 32 names), never executed or kept.
2. The model: ``override_settings.sd_model_checkpoint``, else the tenant's ``options``, else the default model.
3. The sampler: A1111's name -> the first of our schedulers the model serves (``core.catalog.A1111_SAMPLERS``).
4. The jobs: typed v1 requests (txt2img, img2img, inpaint, controlnet), submitted, waited for, answered.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.compat.common import (
    abandon,
    data_uri,
    entry_for,
    image_bytes,
    kept_names,
    renamed,
    seed_of_key,
    shown,
    submit_all,
    until_terminal,
    validate,
    while_connected,
)
from api.deps import backends, tenant
from api.errors import ERROR_RESPONSES, ApiError
from api.routes.models import model_entries
from api.state import Backends
from core import __version__
from core.catalog import A1111_SAMPLERS, A1111_SCHEDULERS, PREPROCESSORS
from core.errors import InputError
from core.jobs import lifecycle
from core.registry import ModelEntry
from core.schemas import MAX_SEED, JobRecord, JobStatus, Txt2ImgRequest
from core.tasks import Task, infer

router = APIRouter(prefix="/sdapi/v1", dependencies=[Depends(tenant)], responses=ERROR_RESPONSES)
controlnet_router = APIRouter(prefix="/controlnet", dependencies=[Depends(tenant)], responses=ERROR_RESPONSES)

MAX_N_ITER = 8  # n_iter jobs of batch_size images: at most 8 x the family's max_images per call
DEFAULT_MODEL = Txt2ImgRequest.model_fields["model"].default
OPTIONS_KIND = "a1111_options"

# our field -> A1111's, for errors raised on the typed request
NAMES = {
    "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale",
    "num_images": "batch_size",
    "strength": "denoising_strength",
    "image": "init_images",
    "mask_image": "mask",
    "model": "override_settings.sd_model_checkpoint",
    "scheduler": "sampler_name",
    "controlnet": "alwayson_scripts.controlnet.args.model",
    "control_image": "alwayson_scripts.controlnet.args.image",
    "controlnet_conditioning_scale": "alwayson_scripts.controlnet.args.weight",
}

# A1111 fields we cannot honour: refused unless they hold A1111's default (they would change the image unseen)
REFUSED_UNLESS_DEFAULT: dict[str, Any] = {
    "enable_hr": False,
    "restore_faces": False,
    "tiling": False,
    "subseed_strength": 0,
    "script_name": None,
    "styles": [],
    "inpainting_mask_invert": 0,
}
# A1111 fields accepted and ignored (reported in info["ignored"] when set to anything but their default)
IGNORED_DEFAULTS: dict[str, Any] = {
    "subseed": -1,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "eta": None,
    "s_churn": 0,
    "s_tmax": None,
    "s_tmin": 0,
    "s_noise": 1,
    "send_images": True,
    "save_images": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "override_settings_restore_afterwards": True,
    "script_args": [],
    "firstphase_width": 0,
    "firstphase_height": 0,
    "hr_scale": 2,
    "hr_upscaler": None,
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_checkpoint_name": None,
    "hr_sampler_name": None,
    "hr_scheduler": None,
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "sampler_index": None,
    "resize_mode": 0,
    "mask_blur": 4,
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "include_init_images": False,
    "image_cfg_scale": 1.5,  # instruct-pix2pix only
    "initial_noise_multiplier": 1,
    "refiner_checkpoint": None,
    "refiner_switch_at": None,
    "disable_extra_networks": False,
    "comments": None,
    "force_task_id": None,
    "infotext": None,
}
QUIET = (None, "", [], {}, False, 0)  # values that never count as "set"
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([-+]?\d*\.?\d+))?[^>]*>")


# -- 1. the payload -------------------------------------------------------------------------------------------------
class AlwaysOnScript(BaseModel):
    """One extension's entry in ``alwayson_scripts``: its positional ``args``."""

    model_config = ConfigDict(extra="allow")
    args: list[Any] = Field(default_factory=list, max_length=64)


class ControlNetUnit(BaseModel):
    """The ControlNet extension's unit (the fields we map; the others are the extension's own knobs)."""

    model_config = ConfigDict(extra="allow")
    enabled: bool = True
    image: str | None = None
    input_image: str | None = None  # older extension versions
    module: str | None = Field(None, max_length=64)
    model: str | None = Field(None, max_length=256)
    weight: float = Field(1.0, ge=0.0, le=5.0)
    threshold_a: float = -1
    threshold_b: float = -1


class Txt2ImgPayload(BaseModel):
    """A1111's txt2img body: the fields mapped to the job; any other field is accepted and reported as ignored."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field("", max_length=4000)
    negative_prompt: str = Field("", max_length=4000)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1: random")
    steps: int = Field(20, ge=1, le=1000)
    cfg_scale: float = Field(7.0, ge=0.0, le=50.0)
    width: int | None = Field(None, ge=8, le=2048, description="default: the model's native size (A1111: 512)")
    height: int | None = Field(None, ge=8, le=2048, description="default: the model's native size (A1111: 512)")
    batch_size: int = Field(1, ge=1, le=8)
    n_iter: int = Field(1, ge=1, le=MAX_N_ITER, description="jobs of batch_size images each")
    sampler_name: str | None = Field(None, max_length=64, description="A1111's name; see GET samplers")
    scheduler: str | None = Field(None, max_length=64, description="automatic or karras")
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0)
    override_settings: dict[str, Any] = Field(default_factory=dict)
    alwayson_scripts: dict[str, AlwaysOnScript] = Field(default_factory=dict)


class Img2ImgPayload(Txt2ImgPayload):
    init_images: list[str] = Field(min_length=1, max_length=1, description="one base64 image")
    mask: str | None = Field(None, description="base64 mask: white is repainted (an inpaint job)")
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)


class A1111Response(BaseModel):
    images: list[str] = Field(description="base64 PNG")
    parameters: dict[str, Any]
    info: str = Field(description="a JSON string: seed, all_seeds, sampler_name, cfg_scale, steps, ... and ignored")


def _extras(payload: Txt2ImgPayload) -> tuple[list[str], list[str]]:
    """(refused, ignored) A1111 fields of the payload."""
    refused, ignored = [], []
    extra = payload.model_extra or {}
    for name, value in extra.items():
        if name.startswith("hr_") and not extra.get("enable_hr"):
            continue  # hires-fix settings, moot without enable_hr (clients send them all)
        if name == "sampler_index" and (payload.sampler_name or value == payload.sampler_name):
            continue  # the deprecated twin of sampler_name
        if name == "eta" and value in (None, 0, 1, 1.0):
            continue
        if name in REFUSED_UNLESS_DEFAULT:
            if value not in (REFUSED_UNLESS_DEFAULT[name], None, ""):
                refused.append(name)
        elif name in IGNORED_DEFAULTS:
            if value not in QUIET and value != IGNORED_DEFAULTS[name]:
                ignored.append(name)
        elif value not in QUIET:
            ignored.append(name)
    if not isinstance(payload, Img2ImgPayload) and payload.denoising_strength not in (None, 0.7, 0.75):
        ignored.append("denoising_strength")  # txt2img: only hires fix uses it
    return refused, ignored


# -- 2. the model ---------------------------------------------------------------------------------------------------
def model_id(title: str) -> str:
    """A checkpoint title as A1111 clients send it (``name.safetensors [hash]``) -> our model id."""
    name = re.sub(r"\s*\[[0-9a-fA-F]+\]\s*$", "", title.strip())
    return re.sub(r"\.(safetensors|ckpt|pt|bin)$", "", name.rsplit("/", 1)[-1])


HASH = re.compile(r"[0-9a-fA-F]{8,64}")


def resolve_checkpoint(b: Backends, t: str, title: str) -> str:
    """The model a client names as A1111 clients do: a title (``sub/name.safetensors [shorthash]``), a name (the
    file's stem, our model id) or a hash (A1111's 10-digit short hash, or the whole sha256). The name wins; a hash
    is looked up when no model has that name. An unknown one comes back as its name (admission then names it)."""
    name = model_id(title)
    entries = _entries(b, t)
    if any(e.id == name for e in entries):
        return name
    bracket = re.search(r"\[([0-9a-fA-F]+)\]\s*$", title)
    digest = bracket.group(1) if bracket else title.strip()
    if HASH.fullmatch(digest):
        digest = digest.lower()
        found = [
            e.id for e in entries if e.version and not e.version.startswith("hub:") and e.version.startswith(digest)
        ]
        if len(found) == 1:
            return found[0]
    return name


def checkpoint_title(e: ModelEntry) -> str:
    """A1111's title of a model: ``name.safetensors [shorthash]`` for a single file (its path under
    Stable-diffusion/ or checkpoints/), our model id for a folder or a hub id."""
    if e.single_file is not None:
        return f"{e.single_file.rel} [{e.short_hash}]"
    return e.id


def _options(b: Backends, t: str) -> dict:
    return b.store.registrations.registration(t, OPTIONS_KIND, "options") or {}


def _current_model(b: Backends, t: str) -> str:
    return _options(b, t).get("sd_model_checkpoint") or DEFAULT_MODEL


def _entries(b: Backends, t: str) -> list[ModelEntry]:
    return [e for e in model_entries(b, t) if {"txt2img", "img2img"} & set(e.tasks)]


# -- 3. the sampler -------------------------------------------------------------------------------------------------
def scheduler_for(sampler: str | None, schedule: str | None, entry: ModelEntry) -> tuple[str | None, str]:
    """(our scheduler name or None for the model's default, the A1111 sampler name reported back)."""
    schedule = (schedule or "automatic").lower()
    if schedule not in A1111_SCHEDULERS:
        raise InputError(f"unknown scheduler {shown(schedule)!r}; known: {sorted(A1111_SCHEDULERS)}", field="scheduler")
    if not sampler:
        return None, entry.default_scheduler
    name = sampler.strip()
    if schedule == "karras" and not name.endswith("Karras"):
        name += " Karras"
    if name not in A1111_SAMPLERS:
        raise InputError(f"unknown sampler {shown(sampler)!r}; see GET /sdapi/v1/samplers", field="sampler_name")
    for ours in A1111_SAMPLERS[name]:
        if ours in entry.schedulers:
            return ours, name
    served = [a for a, ours in A1111_SAMPLERS.items() if set(ours) & set(entry.schedulers)]
    raise InputError(f"model {entry.id!r} does not serve {name!r}; it serves {served}", field="sampler_name")


# -- 4. the jobs ----------------------------------------------------------------------------------------------------
def _controlnet_unit(scripts: dict[str, AlwaysOnScript]) -> ControlNetUnit | None:
    """The ControlNet extension's first enabled unit (``alwayson_scripts.controlnet.args``), or None."""
    units = []
    for name, script in scripts.items():
        if name.lower() != "controlnet":
            if script.args and script.args[0] not in (False, None):  # another extension, switched on
                raise InputError(
                    f"extension {shown(name)!r} is not available here", field=f"alwayson_scripts.{shown(name)}"
                )
            continue
        for arg in script.args:
            if not isinstance(arg, dict):
                raise InputError("a ControlNet unit is an object", field="alwayson_scripts.controlnet.args")
            unit = validate(ControlNetUnit, arg, {})
            if unit.enabled and (unit.image or unit.input_image):
                units.append(unit)
    if len(units) > 1:
        raise InputError("one ControlNet unit per request", field="alwayson_scripts.controlnet.args")
    return units[0] if units else None


def _preprocess(module: str | None) -> str:
    m = (module or "none").lower()
    for name in PREPROCESSORS:
        if m == name or m.startswith(name + "_"):
            return name
    raise InputError(
        f"ControlNet module {shown(module)!r} is not served; use one of {list(PREPROCESSORS)}", field="module"
    )


def build_requests(payload: Txt2ImgPayload, model: str, scheduler: str | None, seed: int) -> tuple[Task, list[Any]]:
    """The task and the typed v1 requests of one A1111 call (one per ``n_iter``)."""
    prompt, loras = payload.prompt, []
    for m in LORA_TAG.finditer(payload.prompt):  # A1111's <lora:name:weight> prompt tags
        loras.append({"name": model_id(m.group(1)), "scale": float(m.group(2) or 1.0)})
    prompt = LORA_TAG.sub("", prompt).strip()
    base: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "negative_prompt": payload.negative_prompt,
        "width": payload.width,
        "height": payload.height,
        "num_inference_steps": payload.steps,
        "guidance_scale": payload.cfg_scale,
        "scheduler": scheduler,
        "num_images": payload.batch_size,
        "loras": loras,
        "preview_every": max(1, payload.steps // 16),  # GET progress shows current_image, as A1111's live preview
    }
    unit = _controlnet_unit(payload.alwayson_scripts)
    if isinstance(payload, Img2ImgPayload):
        if unit is not None:
            raise InputError("ControlNet with init_images is not served", field="alwayson_scripts.controlnet")
        base["image"] = data_uri(payload.init_images[0], "init_images")
        base["strength"] = payload.denoising_strength
        if payload.mask:
            base["mask_image"] = data_uri(payload.mask, "mask")
    elif unit is not None:
        pre = _preprocess(unit.module)
        base.update(
            controlnet=model_id(unit.model or ""),
            control_image=data_uri(unit.image or unit.input_image or "", "image"),
            preprocess=pre,
            controlnet_conditioning_scale=unit.weight,
        )
        if pre == "canny":  # the extension's threshold_a/b are canny's thresholds (-1: the module's default)
            base["canny_low_threshold"] = int(unit.threshold_a) if 0 <= unit.threshold_a <= 255 else 100
            base["canny_high_threshold"] = int(unit.threshold_b) if 0 <= unit.threshold_b <= 255 else 200
    task = infer({k for k, v in base.items() if v})  # image: img2img, mask_image: inpaint, control_image: controlnet
    requests = [
        validate(task.request, {**base, "seed": seed + k * payload.batch_size}, NAMES) for k in range(payload.n_iter)
    ]
    return task, requests


def _info(payload, model: str, entry: ModelEntry, sampler: str, seed: int, jobs, ignored, notes) -> str:
    n = payload.batch_size * payload.n_iter
    seeds = [seed + i for i in range(n)]
    return json.dumps(
        {
            "prompt": payload.prompt,
            "all_prompts": [payload.prompt] * n,
            "negative_prompt": payload.negative_prompt,
            "all_negative_prompts": [payload.negative_prompt] * n,
            "seed": seed,
            "all_seeds": seeds,
            "subseed": -1,
            "all_subseeds": [-1] * n,
            "subseed_strength": 0,
            "width": jobs[0].input.get("width") if jobs else payload.width,
            "height": jobs[0].input.get("height") if jobs else payload.height,
            "sampler_name": sampler,
            "scheduler": jobs[0].input.get("scheduler") if jobs else None,
            "cfg_scale": payload.cfg_scale,
            "steps": payload.steps,
            "batch_size": payload.batch_size,
            "n_iter": payload.n_iter,
            "restore_faces": False,
            "sd_model_name": model,
            "sd_model_checkpoint": model,
            "sd_model_hash": entry.short_hash,
            "denoising_strength": getattr(payload, "denoising_strength", None),
            "index_of_first_image": 0,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
            "version": f"diffuserve {__version__}",
            "job_ids": [j.id for j in jobs],
            "ignored": ignored,
            "notes": notes,
        }
    )


async def _run(request: Request, b: Backends, t: str, task: Task, requests: list) -> list[JobRecord]:
    """Submit the call's jobs and wait for them: the wait slot is taken before anything is submitted (a call refused
    for too many waits leaves no job), and when the wait fails (429, an error, the client gone) the jobs this call
    made are canceled. Past ``SYNC_MAX_WAIT_S`` they go on (504 ``still_running`` names them)."""
    with b.waiters.held(t):
        try:
            submitted = await submit_all(request, b, t, task, requests, {"api": "a1111"})
        except InputError as e:
            raise renamed(e, NAMES) from None
        try:
            deadline = time.monotonic() + b.settings.sync_max_wait_s
            return [await until_terminal(b, t, job, deadline) for job, _ in submitted]
        except BaseException:
            await abandon(b, t, submitted, request.headers.get("idempotency-key"))
            raise


async def generate(request: Request, b: Backends, t: str, payload: Txt2ImgPayload) -> dict:
    refused, ignored = _extras(payload)
    if refused:
        raise InputError(f"not served here: {refused} (leave them at A1111's defaults)", field=refused[0])
    title = _checkpoint_title(payload)
    model = await run_in_threadpool(resolve_checkpoint, b, t, title) if title else None
    model = model or await run_in_threadpool(_current_model, b, t)
    ignored += [f"override_settings.{k}" for k in payload.override_settings if k != "sd_model_checkpoint"]
    try:
        entry = await run_in_threadpool(entry_for, b, t, model)
    except InputError as e:
        raise renamed(e, NAMES) from None
    scheduler, sampler = scheduler_for(_sampler_name(payload), payload.scheduler, entry)  # errors name A1111's fields
    seed = _seed(payload, t, request.headers.get("idempotency-key"))
    try:
        task, requests = build_requests(payload, model, scheduler, seed)
    except InputError as e:
        raise renamed(e, NAMES) from None
    done = await while_connected(request, _run(request, b, t, task, requests))
    _raise_unless_finished(done, b.settings.sync_max_wait_s)
    images: list[str] = []
    for job in done:
        images += [base64.b64encode(png).decode() for png in await run_in_threadpool(image_bytes, b, job)]
    notes = []
    if any(j.status == JobStatus.canceled for j in done):
        notes.append("interrupted: the images of the jobs that finished")
    names, more = kept_names(ignored)
    if more:
        notes.append(f"{more} more ignored fields not listed")
    return {
        "images": images,
        "parameters": _parameters(payload, title),
        "info": _info(payload, model, entry, sampler, seed, done, names, notes),
    }


def _checkpoint_title(payload: Txt2ImgPayload) -> str | None:
    """``override_settings.sd_model_checkpoint``: the model the call asks for, by title; None: the current one."""
    title = payload.override_settings.get("sd_model_checkpoint")
    if title is not None and not (isinstance(title, str) and len(title) <= 256):
        raise InputError("a checkpoint title of at most 256 characters", field="override_settings.sd_model_checkpoint")
    return title


def _sampler_name(payload: Txt2ImgPayload) -> str | None:
    sampler_name = payload.sampler_name or (payload.model_extra or {}).get("sampler_index")  # the older name
    if sampler_name is not None and not isinstance(sampler_name, str):
        raise InputError("a sampler name", field="sampler_index")
    return sampler_name


def _seed(payload: Txt2ImgPayload, tenant: str, key: str | None) -> int:
    """The call's seed: its own, else one drawn; a retry of the call (the same Idempotency-Key) draws the same seed, so
    it is the same call and its jobs come back."""
    if payload.seed >= 0:
        return payload.seed
    if key:
        return seed_of_key(tenant, key, MAX_SEED + 1 - 64)
    return secrets.randbelow(MAX_SEED + 1 - 64)


def _raise_unless_finished(done: list[JobRecord], waited_s: float) -> None:
    """504 while a job still runs (it goes on), 500 with the first failed job's error."""
    if not all(j.status.is_terminal() for j in done):
        raise ApiError(
            504, "still_running", f"not finished within {waited_s:g} s; the jobs go on: {[j.id for j in done]}"
        )
    failed = next((j for j in done if j.status == JobStatus.failed), None)
    if failed is not None:
        err = failed.error
        raise ApiError(500, err.code if err else "failed", f"job {failed.id}: {err.message if err else 'failed'}")


def _parameters(payload: Txt2ImgPayload, title: str | None) -> dict:
    """The call's A1111 fields as answered: the declared ones only (unknown fields are counted in ``info``, never
    echoed), without the images (A1111 drops ``init_images`` and ``mask`` too) or the extensions' args."""
    fields = set(type(payload).model_fields) - {"init_images", "mask", "alwayson_scripts", "override_settings"}
    params = payload.model_dump(include=fields)
    params["override_settings"] = {"sd_model_checkpoint": title} if title else {}
    return params


@router.post("/txt2img", response_model=A1111Response, name="a1111_txt2img")
async def txt2img(request: Request, payload: Txt2ImgPayload, t: str = Depends(tenant), b: Backends = Depends(backends)):
    """A1111's txt2img, answered synchronously (ControlNet units in ``alwayson_scripts.controlnet.args``)."""
    return await generate(request, b, t, payload)


@router.post("/img2img", response_model=A1111Response, name="a1111_img2img")
async def img2img(request: Request, payload: Img2ImgPayload, t: str = Depends(tenant), b: Backends = Depends(backends)):
    """A1111's img2img (with ``mask``: inpainting), answered synchronously."""
    return await generate(request, b, t, payload)


# -- what A1111 clients read ---------------------------------------------------------------------------------------
@router.get("/sd-models", name="a1111_sd_models")
async def sd_models(t: str = Depends(tenant), b: Backends = Depends(backends)) -> list[dict]:
    """The models that draw images, as checkpoints: a single file as A1111 lists it (title ``name.safetensors
    [shorthash]``, its sha256 and short hash as A1111 computes them), a folder by our model id."""
    entries = await run_in_threadpool(_entries, b, t)
    return [
        {
            "title": checkpoint_title(e),
            "model_name": e.id,
            "hash": e.short_hash,
            "sha256": e.version if e.short_hash else None,
            "filename": e.single_file.rel if e.single_file is not None else e.id,
            "config": None,
        }
        for e in entries
    ]


@router.post("/refresh-checkpoints", name="a1111_refresh_checkpoints")
async def refresh_checkpoints(b: Backends = Depends(backends)) -> None:
    await run_in_threadpool(b.registry.refresh)


@router.get("/samplers", name="a1111_samplers")
async def samplers() -> list[dict]:
    """A1111's sampler names we map (each model serves those whose scheduler it has: GET /v1/models)."""
    return [{"name": name, "aliases": list(ours), "options": {}} for name, ours in A1111_SAMPLERS.items()]


@router.get("/schedulers", name="a1111_schedulers")
async def schedulers() -> list[dict]:
    return [
        {"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
        for name, label in A1111_SCHEDULERS.items()
    ]


@router.get("/options", name="a1111_get_options")
async def get_options(t: str = Depends(tenant), b: Backends = Depends(backends)) -> dict:
    """The options A1111 clients read; ``sd_model_checkpoint`` is the tenant's own."""
    model = await run_in_threadpool(_current_model, b, t)
    entry = next((e for e in await run_in_threadpool(_entries, b, t) if e.id == model), None)
    title = checkpoint_title(entry) if entry else model
    sha = entry.version if entry and entry.short_hash else None
    return {
        "sd_model_checkpoint": title,  # A1111's title: what clients compare with GET sd-models' titles
        "sd_checkpoint_hash": sha,
        "samples_format": "png",
        "CLIP_stop_at_last_layers": 1,
    }


class OptionsBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    sd_model_checkpoint: str | None = Field(None, max_length=256)


@router.post("/options", name="a1111_set_options")
async def set_options(body: OptionsBody, t: str = Depends(tenant), b: Backends = Depends(backends)) -> dict:
    """Set ``sd_model_checkpoint`` for this tenant (a title, name or hash; checked to exist); other options are
    ignored and listed."""
    applied = []
    if body.sd_model_checkpoint:
        model = await run_in_threadpool(resolve_checkpoint, b, t, body.sd_model_checkpoint)
        try:
            await run_in_threadpool(entry_for, b, t, model)
        except InputError as e:
            raise renamed(e, {"model": "sd_model_checkpoint"}) from None
        opts = {**await run_in_threadpool(_options, b, t), "sd_model_checkpoint": model}
        await run_in_threadpool(b.store.registrations.register, t, OPTIONS_KIND, "options", opts)
        applied.append("sd_model_checkpoint")
    names, more = kept_names(sorted(body.model_extra or {}))
    return {"applied": applied, "ignored": names, **({"ignored_more": more} if more else {})}


@router.get("/scripts", name="a1111_scripts")
async def scripts(b: Backends = Depends(backends)) -> dict:
    """Script names; ``controlnet m2m`` tells clients the ControlNet extension's unit shape is understood."""
    cn = ["controlnet m2m"] if b.registry.controlnet_names() else []
    return {"txt2img": cn, "img2img": []}


@router.get("/loras", name="a1111_loras")
async def loras(t: str = Depends(tenant), b: Backends = Depends(backends)) -> list[dict]:
    """LoRAs usable as ``<lora:name:weight>`` in a prompt."""
    names = b.registry.lora_names()
    own = [r.get("name") for r in await run_in_threadpool(b.store.registrations.registrations, t, "lora")]
    return [{"name": n, "alias": n, "path": None, "metadata": {}} for n in sorted(set(names) | {n for n in own if n})]


def _current_job(b: Backends, t: str) -> JobRecord | None:
    jobs = [j for j in b.store.jobs.list(t, 50, 0) if not j.status.is_terminal()]
    return next((j for j in jobs if j.status == JobStatus.running), jobs[-1] if jobs else None)


def _last_preview(b: Backends, job_id: str) -> str | None:
    start = max(0, b.store.events.event_count(job_id) - 64)
    previews = [e for e in b.store.events.events(job_id, start) if e.get("event") == "preview"]
    if not previews:
        return None
    uri = (previews[-1].get("data") or {}).get("image") or ""
    return uri.split(",", 1)[1] if "," in uri else None


@router.get("/progress", name="a1111_progress")
async def progress(t: str = Depends(tenant), b: Backends = Depends(backends)) -> dict:
    """The tenant's current job: fraction done, ETA, and ``current_image`` (its latest step preview, when the job
    asked for previews)."""
    job = await run_in_threadpool(_current_job, b, t)
    state = {"skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "0",
             "job_no": 0, "sampling_step": 0, "sampling_steps": 0}  # fmt: skip
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    p = job.progress
    frac = p.step / p.total if p.total else 0.0
    eta = 0.0
    if job.started_at and frac > 0:
        elapsed = (lifecycle.now() - job.started_at).total_seconds()
        eta = max(0.0, elapsed / frac - elapsed)
    state.update(job=job.id, job_count=1, sampling_step=p.step, sampling_steps=p.total,
                 interrupted=job.cancel_requested)  # fmt: skip
    image = await run_in_threadpool(_last_preview, b, job.id)
    return {"progress": frac, "eta_relative": eta, "state": state, "current_image": image, "textinfo": None}


async def _cancel_where(b: Backends, t: str, running_only: bool) -> None:
    jobs = await run_in_threadpool(b.store.jobs.list, t, 100, 0)
    for job in jobs:
        if (job.via or {}).get("api") == "a1111" and not job.status.is_terminal():
            if not running_only or job.status == JobStatus.running:
                await run_in_threadpool(lifecycle.cancel, b.store, job.id)


@router.post("/interrupt", name="a1111_interrupt")
async def interrupt(t: str = Depends(tenant), b: Backends = Depends(backends)) -> None:
    """Cancel the tenant's running and queued A1111 jobs (the waiting call answers with what finished)."""
    await _cancel_where(b, t, running_only=False)


@router.post("/skip", name="a1111_skip")
async def skip(t: str = Depends(tenant), b: Backends = Depends(backends)) -> None:
    """Cancel the tenant's running A1111 jobs only: the next batch of the call goes on."""
    await _cancel_where(b, t, running_only=True)


# -- the ControlNet extension's own routes (/controlnet/...) ---------------------------------------------------------
@controlnet_router.get("/version", name="controlnet_version")
async def controlnet_version() -> dict:
    return {"version": 2}


@controlnet_router.get("/model_list", name="controlnet_model_list")
async def controlnet_model_list(b: Backends = Depends(backends)) -> dict:
    return {"model_list": b.registry.controlnet_names()}


@controlnet_router.get("/module_list", name="controlnet_module_list")
async def controlnet_module_list() -> dict:
    return {"module_list": list(PREPROCESSORS)}
