"""ComfyUI's HTTP and websocket API on the v1 job contract (issue 23): tools that talk to ComfyUI move over by URL.

``POST /prompt`` reads the API-format graph as ONE v1 job (:mod:`.graph`; what it cannot do exactly is a 400 in
ComfyUI's own error shape naming the node) and submits it as every route does (``api.submit.submit_job``: tenant,
rate limit, admission, quotas, batching, storage, webhooks). The prompt id is the job's id as a UUID (or the client's
own ``prompt_id``, kept on the job), so ``/history``, ``/view``, ``/queue`` and the ``/ws`` messages are read from
the durable job store and its event log: any gateway serves them, and a gateway restart loses nothing.

Every route is also served under ``/api`` (as ComfyUI serves them for its own front end).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import platform
import re
import struct
import sys
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from api.compat.comfyui import graph as graphs
from api.compat.comfyui import masks
from api.compat.comfyui.graph import GraphError, NodeError, Plan
from api.compat.comfyui.nodes import SERVED, node_types, object_info
from api.compat.common import SNIFF, entry_for
from api.deps import backends, rate_limited, tenant
from api.errors import ApiError, shown
from api.routes.models import model_entries
from api.routes.uploads import read_limited
from api.state import Backends
from api.submit import submit_job
from api.waiters import wait_for
from core import __version__, uploads
from core.catalog import COMFYUI_SAMPLERS
from core.errors import InputError, ServiceError
from core.jobs import lifecycle
from core.registry import ModelEntry
from core.schemas import JobRecord, JobStatus, JobType
from core.storage import upload_key
from core.tasks import TASKS, Task

http = APIRouter(dependencies=[Depends(tenant)])
ws_router = APIRouter()
API = "comfyui"
SCAN = 500  # the tenant's newest jobs searched for a client's own prompt_id, /history and /queue
CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
PROMPT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
IMAGE_NAME = re.compile(r"_([0-9a-f]{32})_(control_)?(\d{5})_\.png$")
RECENT_S = 30.0  # a websocket that connects also hears of its client's prompts that ended this recently
TICK_S = 1.0  # a websocket looks for its client's new prompts this often (their events wake it at once)
PREVIEW_IMAGE, PNG = 1, 2  # ComfyUI's binary frame: event type, then image type, big-endian uint32 each


# -- the prompt id: the job's own id, or the client's (kept on the job) ---------------------------------------------
def prompt_id_of(job: JobRecord) -> str:
    return (job.via or {}).get("prompt_id") or str(uuid.UUID(job.id.removeprefix("job_")))


def _is_comfy(job: JobRecord | None, t: str) -> bool:
    return job is not None and job.tenant == t and (job.via or {}).get("api") == API


def comfy_jobs(b: Backends, t: str, limit: int = SCAN) -> list[JobRecord]:
    """The tenant's ComfyUI jobs among its ``limit`` newest, newest first. Blocking."""
    out: list[JobRecord] = []
    for offset in range(0, limit, 100):
        page = b.store.jobs.list(t, min(100, limit - offset), offset)
        out += [j for j in page if _is_comfy(j, t)]
        if len(page) < min(100, limit - offset):
            break
    return out


def find_job(b: Backends, t: str, prompt_id: str) -> JobRecord | None:
    """The tenant's job of ``prompt_id``: by the id it is derived from, else (a client's own id) among the newest."""
    if not PROMPT_ID.match(prompt_id):
        return None
    with contextlib.suppress(ValueError):
        job = b.store.jobs.get("job_" + uuid.UUID(prompt_id).hex)
        if _is_comfy(job, t) and prompt_id_of(job) == prompt_id:
            return job
    return next((j for j in comfy_jobs(b, t) if (j.via or {}).get("prompt_id") == prompt_id), None)


# -- ComfyUI's answers ----------------------------------------------------------------------------------------------
def _error(type: str, message: str, details: str = "") -> dict:
    return {"type": type, "message": message, "details": details, "extra_info": {}}


def node_error_response(e: NodeError, plan: Plan | None) -> JSONResponse:
    """400 as ComfyUI's ``validate_prompt`` answers a node's bad input."""
    info = {"input_name": e.input_name} if e.input_name else {}
    outputs = list(plan.outputs) if plan else []
    body = {
        "error": _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", ""),
        "node_errors": {
            e.node_id: {
                "errors": [{**_error(e.type, e.message, e.details), "extra_info": info}],
                "dependent_outputs": outputs,
                "class_type": e.class_type,
            }
        },
    }
    body["error"]["details"] = f"{e.class_type} #{e.node_id}: {e.details}"
    return JSONResponse(body, status_code=400)


def graph_error_response(e: GraphError) -> JSONResponse:
    node_errors: dict = {}
    if e.node is not None:
        nid, ctype = e.node
        node_errors[nid] = {"errors": [_error(e.type, e.message, e.details)], "dependent_outputs": [],
                            "class_type": ctype}  # fmt: skip
    return JSONResponse({"error": _error(e.type, e.message, e.details), "node_errors": node_errors}, status_code=400)


def _renamed(plan: Plan, e: ServiceError) -> NodeError:
    """A refusal of the v1 request (admission, validation) as the node input it came from."""
    ours = (e.field or "").split(".")[0]
    nid, name = plan.names.get(ours, (plan.sampler_node, ""))
    ctype = plan.graph.get(nid, {}).get("class_type") or _class_of(plan, nid)
    kind = "value_not_in_list" if str(e.code).startswith("unknown") else "invalid_input"
    message = "Value not in list" if kind == "value_not_in_list" else "Value not accepted"
    return NodeError(nid, ctype, kind, message, f"{name}: {e.message}" if name else e.message, name)


def _class_of(plan: Plan, nid: str) -> str:
    return plan.graph.get(nid, {}).get("class_type", "KSampler")


# -- building the job -----------------------------------------------------------------------------------------------
def scheduler_for(plan: Plan, entry: ModelEntry) -> str:
    sampler, schedule = plan.sampler
    nid, ctype = plan.sampler_node, _class_of(plan, plan.sampler_node)
    served = [pair for pair, ours in COMFYUI_SAMPLERS.items() if set(ours) & set(entry.schedulers)]
    if (sampler, schedule) not in COMFYUI_SAMPLERS:
        known = sorted({s for s, _ in COMFYUI_SAMPLERS})
        bad, name = ("sampler_name", sampler) if sampler not in known else ("scheduler", schedule)
        raise NodeError(
            nid,
            ctype,
            "value_not_in_list",
            "Value not in list",
            f"{bad}: '{shown(name)}' with {'sampler' if bad == 'scheduler' else 'scheduler'} "
            f"'{shown(schedule if bad == 'sampler_name' else sampler)}' is not served; served pairs: "
            f"{[f'{a}/{b}' for a, b in served]}",
            bad,
        )
    for ours in COMFYUI_SAMPLERS[(sampler, schedule)]:
        if ours in entry.schedulers:
            return ours
    raise NodeError(
        nid,
        ctype,
        "value_not_in_list",
        "Value not in list",
        f"sampler_name: model '{entry.id}' does not serve '{sampler}/{schedule}'; it serves "
        f"{[f'{a}/{b}' for a, b in served]}",
        "sampler_name",
    )


def _upload_bytes(b: Backends, t: str, plan: Plan, use: graphs.ImageUse) -> bytes:
    try:
        return b.storage.get(upload_key(t, use.upload_id))
    except KeyError:
        raise NodeError(use.node_id, _class_of(plan, use.node_id), "value_not_in_list", "Value not in list",
                        f"image: no uploaded image '{use.upload_id}.png'", "image") from None  # fmt: skip


EXTRA_FIELDS = ("webhook", "webhook_events_filter", "priority")  # what ComfyUI lacks, asked for in extra_data


def _extra(extra_data: object) -> dict:
    """The v1 fields a client asks for in ``extra_data`` (a webhook, a priority); the rest of it (the UI's workflow,
    say) is neither used nor kept."""
    if not isinstance(extra_data, dict):
        return {}
    return {k: extra_data[k] for k in EXTRA_FIELDS if k in extra_data}


def _entry(b: Backends, t: str, plan: Plan, model: str) -> ModelEntry:
    """The model ``ckpt_name`` names; unknown: the node's error lists the served ones, as ComfyUI's does."""
    try:
        return entry_for(b, t, model)
    except ServiceError as e:
        if e.code == "unknown_model":
            served = _lists(b, t)[0][:20]
            e = InputError(f"unknown model {model!r}; served (GET /object_info): {served}", e.field, e.code)
        raise _renamed(plan, e) from None


def _resolve(b: Backends, t: str, plan: Plan, extra: dict) -> tuple[Task, BaseModel]:
    """The typed v1 request of ``plan``: the model entry, the scheduler, the input images' sizes and masks.
    Blocking (store and storage reads)."""
    fields = {**plan.fields, **extra}
    entry = _entry(b, t, plan, fields["model"])
    fields["scheduler"] = scheduler_for(plan, entry)
    fields["preview_every"] = max(1, int(fields["num_inference_steps"]) // 16)  # the /ws preview frames
    size = None
    if plan.image is not None:
        try:
            meta = uploads.metadata(b.storage, t, plan.image.upload_id, "image")
        except ServiceError as e:
            raise _renamed(plan, e) from None
        size = (meta.get("width"), meta.get("height"))
        fields.update(image=plan.image.upload_id, width=size[0], height=size[1])  # ComfyUI draws at the image's size
    if plan.mask is not None:
        use = plan.mask
        ctype = _class_of(plan, use.node_id)
        try:
            mask = masks.read_mask(_upload_bytes(b, t, plan, use), use.kind, use.channel)
        except (OSError, ValueError):  # an upload that is no image (a training zip)
            raise NodeError(use.node_id, ctype, "invalid_input", "Not an image", "image: not an image upload",
                            "image") from None  # fmt: skip
        if mask is None:
            raise NodeError(
                use.node_id,
                ctype,
                "invalid_input",
                "Image has no alpha channel",
                "image: LoadImage's MASK is the image's alpha (painted in the mask editor)",
                "image",
            )
        if size is not None and mask.size != size:
            raise NodeError(
                use.node_id,
                ctype,
                "invalid_input",
                "Mask size differs from the image's",
                f"image: mask {mask.size[0]}x{mask.size[1]}, image {size[0]}x{size[1]}",
                "image",
            )
        if use.grow is not None:
            mask = masks.grow(mask, use.grow)
        fields["mask_image"] = "data:image/png;base64," + base64.b64encode(masks.png(mask)).decode()
    if plan.control is not None:
        fields["control_image"] = plan.control.upload_id
    task = TASKS[JobType(plan.task)]
    try:
        return task, task.request.model_validate(fields)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        if loc.split(".")[0] in EXTRA_FIELDS:
            raise InputError(err.get("msg", "invalid"), field=loc) from None
        raise _renamed(plan, InputError(err.get("msg", "invalid"), field=loc)) from None


def _kept_graph(plan: Plan) -> dict:
    """The graph as the job keeps it: the nodes that run, each with the inputs its type declares."""
    types = node_types([], [], [], [])
    kept = {}
    for nid, node in plan.graph.items():
        spec = types[node["class_type"]][0]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        kept[nid] = {
            "inputs": {k: v for k, v in node["inputs"].items() if k in declared},
            "class_type": node["class_type"],
        }
    return kept


@http.post("/prompt", name="comfyui_prompt", include_in_schema=False)
async def post_prompt(request: Request, t: str = Depends(tenant), b: Backends = Depends(backends)):
    """Queue an API-format graph as one job: ``{"prompt_id", "number", "node_errors"}``."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return JSONResponse({"error": "invalid JSON", "node_errors": []}, status_code=400)
    if not isinstance(body, dict) or "prompt" not in body:
        return JSONResponse({"error": "no prompt", "node_errors": []}, status_code=400)
    client_id = body.get("client_id")
    if client_id is not None and not (isinstance(client_id, str) and CLIENT_ID.match(client_id)):
        raise ApiError(422, "validation_error", "client_id: 1 to 128 of [A-Za-z0-9_.:-]", "client_id")
    own_id = body.get("prompt_id")
    if own_id is not None and not (isinstance(own_id, str) and PROMPT_ID.match(own_id)):
        raise ApiError(422, "validation_error", "prompt_id: 1 to 64 of [A-Za-z0-9_.:-]", "prompt_id")
    plan = None
    try:
        plan = graphs.read(body["prompt"])
        task, req = await run_in_threadpool(_resolve, b, t, plan, _extra(body.get("extra_data")))
        number = int(time.time() * 1000)
        via: dict[str, Any] = {"api": API, "client_id": client_id, "number": number, "graph": _kept_graph(plan),
                               "outputs": plan.outputs, "order": plan.order,
                               "sampler": [plan.sampler_node, _class_of(plan, plan.sampler_node)]}  # fmt: skip
        idem: tuple[str, str] | bool = True
        if own_id is not None:
            via["prompt_id"] = own_id
            digest = hashlib.sha256(f"{task.type.value}\n{req.model_dump_json()}".encode()).hexdigest()
            idem = (f"comfyui-prompt:{own_id}", digest)  # the same prompt_id twice: the first job, not a second one
        job, _ = await submit_job(request, b, t, task, req, via, idempotency=idem)
    except GraphError as e:
        return graph_error_response(e)
    except NodeError as e:
        return node_error_response(e, plan)
    except InputError as e:
        assert plan is not None
        if (e.field or "").split(".")[0] in EXTRA_FIELDS:  # not a node's: ComfyUI's top-level error
            details = f"extra_data.{e.field}: {e.message}"
            return JSONResponse({"error": _error("invalid_extra_data", "Invalid extra_data", details),
                                 "node_errors": {}}, status_code=400)  # fmt: skip
        return node_error_response(_renamed(plan, e), plan)
    for feed in FEEDS.get((t, client_id or ""), ()):  # this gateway's sockets of the client hear of it now
        feed.poked.set()
    return {"prompt_id": prompt_id_of(job), "number": (job.via or {}).get("number", number), "node_errors": {}}


# -- history, queue, outputs ----------------------------------------------------------------------------------------
def _images(job: JobRecord, control: bool = False) -> list[str]:
    """The storage keys of the job's drawn images (``control``: its ControlNet's detected map), in output order."""
    keys = []
    for o in job.output:
        extra = o.model_extra or {}
        if o.content_type == "image/png" and extra.get("key") and (extra.get("role") == "control_image") == control:
            keys.append(extra["key"])
    return keys


def outputs_of(job: JobRecord) -> dict[str, dict]:
    """ComfyUI's ``outputs``: each output node's images, as ``/view`` serves them."""
    via = job.via or {}
    ok = job.status == JobStatus.succeeded
    hexid = job.id.removeprefix("job_")
    out = {}
    for nid, (_, prefix, kind, shows) in via.get("outputs", {}).items():
        mark = "control_" if shows == "control" else ""
        n = len(_images(job, control=shows == "control")) if ok else 0
        images = [{"filename": f"{prefix}_{hexid}_{mark}{i:05}_.png", "subfolder": "", "type": kind} for i in range(n)]
        out[nid] = {"images": images}
    return out


def _ms(dt) -> int:
    return int(dt.timestamp() * 1000) if dt else 0


def _queue_item(job: JobRecord) -> list:
    via = job.via or {}
    extra = {"client_id": via.get("client_id")}
    return [via.get("number", 0), prompt_id_of(job), via.get("graph", {}), extra, list(via.get("outputs", {}))]


def history_item(job: JobRecord) -> dict:
    """One prompt of ``/history`` (ComfyUI's ``PromptQueue.task_done`` record)."""
    pid = prompt_id_of(job)
    via = job.via or {}
    started = {"prompt_id": pid, "timestamp": _ms(job.started_at or job.created_at)}
    messages: list = [["execution_start", started], ["execution_cached", {"nodes": [], **started}]]
    end = {"prompt_id": pid, "timestamp": _ms(job.finished_at)}
    nid, ctype = via.get("sampler", ["", ""])
    if job.status == JobStatus.succeeded:
        messages.append(["execution_success", end])
    elif job.status == JobStatus.canceled:
        messages.append(["execution_interrupted", {**end, "node_id": nid, "node_type": ctype, "executed": []}])
    else:
        messages.append(["execution_error", {**end, **_error_data(job)}])
    return {
        "prompt": _queue_item(job),
        "outputs": outputs_of(job),
        "status": {
            "status_str": "success" if job.status == JobStatus.succeeded else "error",
            "completed": job.status == JobStatus.succeeded,
            "messages": messages,
        },
        "meta": {
            n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in via.get("outputs", {})
        },  # fmt: skip
    }


def _error_data(job: JobRecord) -> dict:
    nid, ctype = (job.via or {}).get("sampler", ["", ""])
    err = job.error
    return {"node_id": nid, "node_type": ctype, "executed": [],
            "exception_message": err.message if err else "failed", "exception_type": err.code if err else "error",
            "traceback": [], "current_inputs": {}, "current_outputs": []}  # fmt: skip


@http.get("/history", name="comfyui_history", include_in_schema=False)
async def get_history(max_items: int | None = None, t: str = Depends(tenant), b: Backends = Depends(backends)):
    """The tenant's finished prompts (its newest 500 jobs at most), oldest first; ``max_items``: the newest N."""
    jobs = await run_in_threadpool(comfy_jobs, b, t)
    done = [j for j in jobs if j.status.is_terminal()]
    if max_items is not None:
        done = done[: max(0, max_items)]
    return {prompt_id_of(j): history_item(j) for j in reversed(done)}


@http.get("/history/{prompt_id}", name="comfyui_history_prompt", include_in_schema=False)
async def get_history_prompt(prompt_id: str, t: str = Depends(tenant), b: Backends = Depends(backends)):
    """One prompt once it has ended; ``{}`` while it is queued or running, or when it is not the tenant's."""
    job = await run_in_threadpool(find_job, b, t, prompt_id)
    if job is None or not job.status.is_terminal():
        return {}
    return {prompt_id: history_item(job)}


@http.post("/history", name="comfyui_history_delete", include_in_schema=False)
async def post_history(request: Request) -> Response:
    """Accepted and ignored: prompts are jobs, kept for JOB_TTL_S as every job is."""
    return Response(status_code=200)


def _active(b: Backends, t: str) -> list[JobRecord]:
    return [j for j in comfy_jobs(b, t, 200) if not j.status.is_terminal()]


@http.get("/queue", name="comfyui_queue", include_in_schema=False)
async def get_queue(t: str = Depends(tenant), b: Backends = Depends(backends)) -> dict:
    """The tenant's running and pending prompts."""
    jobs = await run_in_threadpool(_active, b, t)
    running = [_queue_item(j) for j in reversed(jobs) if j.status == JobStatus.running]
    pending = sorted((_queue_item(j) for j in jobs if j.status == JobStatus.queued), key=lambda q: q[0])
    return {"queue_running": running, "queue_pending": pending}


def _queue_info(b: Backends, t: str) -> dict:
    return {"exec_info": {"queue_remaining": len(_active(b, t))}}


@http.get("/prompt", name="comfyui_queue_info", include_in_schema=False)
async def get_prompt(t: str = Depends(tenant), b: Backends = Depends(backends)) -> dict:
    return await run_in_threadpool(_queue_info, b, t)


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _cancel(b: Backends, t: str, ids: list[str] | None, status: JobStatus) -> None:
    """Cancel the tenant's ComfyUI jobs in ``status`` (of the prompt ids ``ids``; None: all). Blocking."""
    wanted = None if ids is None else {i for i in ids[:100] if isinstance(i, str)}
    for job in _active(b, t):
        if job.status == status and (wanted is None or prompt_id_of(job) in wanted):
            lifecycle.cancel(b.store, job.id)


@http.post("/queue", name="comfyui_queue_delete", include_in_schema=False)
async def post_queue(request: Request, t: str = Depends(tenant), b: Backends = Depends(backends)) -> Response:
    """``{"delete": [prompt_id, ...]}`` / ``{"clear": true}``: cancel pending prompts (a running one goes on)."""
    body = await _json_body(request)
    if body.get("clear"):
        await run_in_threadpool(_cancel, b, t, None, JobStatus.queued)
    if isinstance(body.get("delete"), list):
        await run_in_threadpool(_cancel, b, t, body["delete"], JobStatus.queued)
    return Response(status_code=200)


@http.post("/interrupt", name="comfyui_interrupt", include_in_schema=False)
async def post_interrupt(request: Request, t: str = Depends(tenant), b: Backends = Depends(backends)) -> Response:
    """Stop the tenant's running prompt (``{"prompt_id"}``: only that one) at its next step."""
    pid = (await _json_body(request)).get("prompt_id")
    await run_in_threadpool(_cancel, b, t, [pid] if isinstance(pid, str) else None, JobStatus.running)
    return Response(status_code=200)


def _view_bytes(b: Backends, t: str, filename: str, kind: str) -> bytes | None:
    if kind == "input":
        m = graphs.UPLOAD_IN_NAME.search(filename)
        if m is None:
            return None
        try:
            return b.storage.get(upload_key(t, m.group(0)))
        except KeyError:
            return None
    m = IMAGE_NAME.search(filename)
    if m is None:
        return None
    job = b.store.jobs.get("job_" + m.group(1))
    if not _is_comfy(job, t) or job.status != JobStatus.succeeded:
        return None
    keys = _images(job, control=bool(m.group(2)))
    i = int(m.group(3))
    return b.storage.get(keys[i]) if i < len(keys) else None


@http.get("/view", name="comfyui_view", include_in_schema=False)
async def view(filename: str, type: str = "output", subfolder: str = "", t: str = Depends(tenant),
               b: Backends = Depends(backends)) -> Response:  # fmt: skip
    """An output image (``type`` output or temp) or an uploaded input (``type=input``) of the tenant: the bytes."""
    if len(filename) > 256 or type not in ("output", "temp", "input"):
        return Response(status_code=400)
    data = await run_in_threadpool(_view_bytes, b, t, filename, type)
    if data is None:
        return Response(status_code=404)
    fmt = next((f for magic, f in SNIFF.items() if data.startswith(magic)), None)
    if fmt is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt = "webp"
    if fmt is None:  # an upload that is not an image (a training zip): not ComfyUI's to show
        return Response(status_code=404)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", filename.rsplit("/", 1)[-1])
    return Response(data, media_type=f"image/{fmt}", headers={"Content-Disposition": f'filename="{name}"'})


async def _read_image(b: Backends, image: UploadFile) -> bytes:
    return await read_limited(image, b.settings.max_upload_bytes, "image")


async def _save(b: Backends, t: str, data: bytes, subfolder: str, type: str) -> dict:
    """``data`` as an upload of the tenant, checked as every upload (size, pixels, formats): ComfyUI's answer."""
    info = await run_in_threadpool(uploads.describe, data, "image", b.settings.max_image_pixels)
    if "width" not in info:
        raise ApiError(422, "invalid_image", "not a PNG, JPEG or WebP image", "image")
    saved = await run_in_threadpool(uploads.save, b.store.retention, b.storage, t, data, info, b.settings.job_ttl_s)
    ext = info["content_type"].split("/")[-1].replace("jpeg", "jpg")
    kind = type if type in ("input", "temp", "output") else "input"
    return {"name": f"{saved['id']}.{ext}", "subfolder": subfolder[:128], "type": kind}


@http.post("/upload/image", name="comfyui_upload_image", include_in_schema=False)
async def upload_image(
    image: UploadFile = File(...),
    overwrite: str | None = Form(None),
    type: str = Form("input"),
    subfolder: str = Form(""),
    t: str = Depends(rate_limited),
    b: Backends = Depends(backends),
) -> dict:
    """An image for ``LoadImage``: an upload of the tenant (checked as every upload); use the ``name`` answered
    (``overwrite`` is moot: every upload is a new name)."""
    return await _save(b, t, await _read_image(b, image), subfolder, type)


@http.post("/upload/mask", name="comfyui_upload_mask", include_in_schema=False)
async def upload_mask(
    image: UploadFile = File(...),
    original_ref: str = Form(..., max_length=1024),
    type: str = Form("input"),
    subfolder: str = Form(""),
    t: str = Depends(rate_limited),
    b: Backends = Depends(backends),
) -> dict:
    """The mask editor's save: the image ``original_ref`` names (the tenant's upload or output) with the alpha of
    ``image``, as a new upload (LoadImage's MASK is 1 - that alpha)."""
    try:
        ref = json.loads(original_ref)
        filename, kind = str(ref["filename"])[:256], str(ref.get("type", "input"))
    except (ValueError, KeyError, TypeError):
        raise ApiError(422, "validation_error", "original_ref: {filename, subfolder, type}", "original_ref") from None
    mask = await _read_image(b, image)
    original = await run_in_threadpool(_view_bytes, b, t, filename, kind)
    if original is None:
        raise ApiError(404, "not_found", f"no image {shown(filename)!r}", "original_ref")
    for data, field in ((mask, "image"), (original, "original_ref")):  # checked before decoding: images only
        info = await run_in_threadpool(uploads.describe, data, field, b.settings.max_image_pixels)
        if not info["content_type"].startswith("image/"):
            raise ApiError(422, "invalid_image", "a PNG, JPEG or WebP image is needed here, not a zip", field)
    combined = await run_in_threadpool(masks.with_alpha, original, mask)
    return await _save(b, t, combined, subfolder, type)


# -- what clients read of the server -------------------------------------------------------------------------------
def _lists(b: Backends, t: str) -> tuple[list[str], list[str], list[str]]:
    checkpoints = [e.id for e in model_entries(b, t) if {"txt2img", "img2img"} & set(e.tasks)]
    own = [r.get("name") for r in b.store.registrations.registrations(t, "lora")]
    loras = sorted(set(b.registry.lora_names()) | {n for n in own if n})
    return checkpoints, loras, b.registry.controlnet_names()


@http.get("/object_info", name="comfyui_object_info", include_in_schema=False)
async def get_object_info(t: str = Depends(tenant), b: Backends = Depends(backends)) -> dict:
    """The node types served, with the lists this tenant may use (checkpoints, samplers, schedulers, LoRAs,
    ControlNets)."""
    return object_info(node_types(*await run_in_threadpool(_lists, b, t), []))


@http.get("/object_info/{node_class}", name="comfyui_object_info_node", include_in_schema=False)
async def get_object_info_node(node_class: str, t: str = Depends(tenant), b: Backends = Depends(backends)) -> dict:
    if node_class not in SERVED:
        return {}
    return object_info(node_types(*await run_in_threadpool(_lists, b, t), []), only=node_class)


@http.get("/embeddings", name="comfyui_embeddings", include_in_schema=False)
async def get_embeddings() -> list:
    return []


@http.get("/system_stats", name="comfyui_system_stats", include_in_schema=False)
async def system_stats() -> dict:
    """ComfyUI's shape; the devices are the workers', not this gateway's: none is listed."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    total = os.sysconf("SC_PHYS_PAGES") * page if page else 0
    free = os.sysconf("SC_AVPHYS_PAGES") * page if page else 0
    return {
        "system": {
            "os": os.name,
            "ram_total": total,
            "ram_free": free,
            "comfyui_version": f"diffuserve {__version__}",
            "python_version": sys.version,
            "pytorch_version": None,
            "embedded_python": False,
            "argv": [],
            "platform": platform.system(),
        },
        "devices": [],
    }


# -- the websocket: the messages ComfyUI clients read, from the jobs' durable event logs ----------------------------
class Feed:
    """One ``/ws`` connection: the prompts of its ``clientId`` (the tenant's jobs submitted with it), each job's
    events translated to ComfyUI's messages in order. Reads the store only: any gateway serves it. A prompt posted
    to this gateway pokes its client's sockets (they look at once); one posted elsewhere is found within a tick."""

    def __init__(self, ws: WebSocket, b: Backends, t: str, sid: str):
        self.ws, self.b, self.t, self.sid = ws, b, t, sid
        self.tracked: dict[str, dict] = {}  # job id -> {seq, started, late, job}
        self.done: set[str] = set()
        self.opened = time.time()
        self.since = self.opened - RECENT_S
        self.poked = asyncio.Event()

    async def send(self, type: str, data: dict) -> None:
        await self.ws.send_text(json.dumps({"type": type, "data": data}))

    async def status(self) -> None:
        info = await run_in_threadpool(_queue_info, self.b, self.t)
        await self.send("status", {"status": info, "sid": self.sid})

    def _discover(self) -> list[JobRecord]:
        jobs = comfy_jobs(self.b, self.t, 100)
        new = []
        for j in reversed(jobs):  # oldest first: ComfyUI runs prompts in order
            via = j.via or {}
            if j.id in self.tracked or j.id in self.done or via.get("client_id") != self.sid:
                continue
            if j.status.is_terminal() and (j.finished_at is None or j.finished_at.timestamp() < self.since):
                continue
            new.append(j)
        return new

    async def run(self) -> None:
        key = (self.t, self.sid)
        FEEDS.setdefault(key, set()).add(self)
        try:
            await self._run()
        finally:
            FEEDS[key].discard(self)
            if not FEEDS[key]:
                del FEEDS[key]

    async def _run(self) -> None:
        await self.status()
        next_scan = 0.0
        while True:
            if self.poked.is_set() or time.monotonic() >= next_scan:  # new prompts: when poked, else once a tick
                self.poked.clear()
                next_scan = time.monotonic() + TICK_S
                for job in await run_in_threadpool(self._discover):
                    late = job.created_at.timestamp() < self.opened  # queued before this socket: a reconnect
                    self.tracked[job.id] = {"seq": 0, "started": False, "late": late, "job": job}
            if not self.tracked:
                await wait_for(self.poked, TICK_S)
                continue
            first = next(iter(self.tracked))
            async with self.b.waiters.watch(self.t, first, every_event=True, held=True) as changed:
                changed.clear()
                progressed = False
                for job_id in list(self.tracked):
                    progressed |= await self.pump(job_id)
                if not progressed:
                    await _either(changed, self.poked, TICK_S)

    async def pump(self, job_id: str) -> bool:
        """Send the messages of the job's new events; True when there were any."""
        state = self.tracked[job_id]
        events = await run_in_threadpool(self.b.store.events.events, job_id, state["seq"])
        if not events:
            job = await run_in_threadpool(self.b.store.jobs.get, job_id)
            if job is None:  # expired
                self.tracked.pop(job_id)
                self.done.add(job_id)
            elif job.status.is_terminal() and job.finished_at and time.time() - job.finished_at.timestamp() > 60:
                await self.finish(job)  # its log expired before we read it: end it from the record
            return False
        state["seq"] = events[-1]["seq"] + 1
        job: JobRecord = state["job"]
        via = job.via or {}
        pid = prompt_id_of(job)
        sampler = via.get("sampler", ["", ""])[0]
        # a late reader (a socket opened after the prompt was queued: a reconnect) gets the latest step and preview
        # of what it missed, not each one; a socket that was open gets every step
        coalesce, state["late"] = state["late"], False
        last_progress = max((i for i, e in enumerate(events) if e["event"] == "progress"), default=-1)
        last_preview = max((i for i, e in enumerate(events) if e["event"] == "preview"), default=-1)
        for i, e in enumerate(events):
            name, data = e["event"], e.get("data") or {}
            if name == "status":
                status = JobStatus(data.get("status"))
                if status != JobStatus.queued and not state["started"]:
                    await self.start(job, pid)
                    state["started"] = True
                if status.is_terminal():
                    fresh = await run_in_threadpool(self.b.store.jobs.get, job_id)
                    await self.finish(fresh or job)
                    return True
            elif name == "progress" and (i == last_progress or not coalesce) and data.get("total"):
                if not state["started"]:
                    await self.start(job, pid)
                    state["started"] = True
                await self.send(
                    "progress", {"value": data.get("step", 0), "max": data["total"], "prompt_id": pid, "node": sampler}
                )
            elif name == "preview" and (i == last_preview or not coalesce):
                uri = data.get("image") or ""
                if "," in uri:
                    png = base64.b64decode(uri.split(",", 1)[1])
                    await self.ws.send_bytes(struct.pack(">II", PREVIEW_IMAGE, PNG) + png)
        return True

    async def start(self, job: JobRecord, pid: str) -> None:
        via = job.via or {}
        now = int(time.time() * 1000)
        await self.status()
        await self.send("execution_start", {"prompt_id": pid, "timestamp": now})
        await self.send("execution_cached", {"nodes": [], "prompt_id": pid, "timestamp": now})
        sampler = via.get("sampler", ["", ""])[0]
        for nid in via.get("order", []):
            await self.send("executing", {"node": nid, "display_node": nid, "prompt_id": pid})
            if nid == sampler:
                break

    async def finish(self, job: JobRecord) -> None:
        self.tracked.pop(job.id, None)
        self.done.add(job.id)
        via = job.via or {}
        pid = prompt_id_of(job)
        now = int(time.time() * 1000)
        nid, ctype = via.get("sampler", ["", ""])
        order = via.get("order", [])
        if job.status == JobStatus.succeeded:
            outputs = outputs_of(job)
            for n in order[order.index(nid) + 1 :] if nid in order else []:
                await self.send("executing", {"node": n, "display_node": n, "prompt_id": pid})
                if n in outputs:
                    await self.send("executed", {"node": n, "display_node": n, "output": outputs[n], "prompt_id": pid})
            await self.send("execution_success", {"prompt_id": pid, "timestamp": now})
        elif job.status == JobStatus.canceled:
            await self.send(
                "execution_interrupted",
                {"prompt_id": pid, "node_id": nid, "node_type": ctype, "executed": [], "timestamp": now},
            )
        else:
            await self.send("execution_error", {"prompt_id": pid, "timestamp": now, **_error_data(job)})
        await self.send("executing", {"node": None, "prompt_id": pid})
        await self.status()


@ws_router.websocket("/ws")
async def websocket(ws: WebSocket, clientId: str = "") -> None:  # noqa: N803 - ComfyUI's query parameter
    """ComfyUI's progress socket for ``clientId``: ``status``, ``execution_start``, ``executing``, ``progress``,
    ``executed``, ``execution_success`` / ``execution_error`` / ``execution_interrupted``, preview frames."""
    b: Backends = ws.app.state.backends
    try:
        t = await tenant(ws, b)  # type: ignore[arg-type] - the headers are all it reads
        release = b.waiters.take(t)  # one of the tenant's open waits, as an event stream
    except (ApiError, ServiceError):
        await ws.close(code=1008)
        return
    try:
        sid = clientId if CLIENT_ID.match(clientId or "") else uuid.uuid4().hex
        await ws.accept()
        feed = asyncio.ensure_future(Feed(ws, b, t, sid).run())
        gone = asyncio.ensure_future(_until_closed(ws))
        await asyncio.wait({feed, gone}, return_when=asyncio.FIRST_COMPLETED)
        for task in (feed, gone):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await feed
    finally:
        release()


FEEDS: dict[tuple[str, str], set[Feed]] = {}  # (tenant, clientId) -> this gateway's open sockets


async def _either(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    """Until ``a`` or ``b`` is set, or ``timeout`` seconds."""
    waits = [asyncio.ensure_future(e.wait()) for e in (a, b)]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _until_closed(ws: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return


router = APIRouter()
router.include_router(http)
router.include_router(ws_router)
router.include_router(http, prefix="/api", include_in_schema=False)
router.include_router(ws_router, prefix="/api")
