"""Replicate's predictions API: a prediction and its job are the same object seen two ways (the prediction id is the
job id; ``GET /v1/jobs/{id}`` reads it too).

1. The body: ``input`` (Replicate's usual names, or ours; a file input as the URL ``POST /v1/files`` gave, which
   names an upload: ``api/compat/replicate_files.py``), ``webhook`` and ``webhook_events_filter``; the model from
   the URL (``/v1/models/{owner}/{name}/predictions``, ``name`` is our model id) or ``version``.
2. The job: the input mapped to a typed v1 request (txt2img, img2img, inpaint, controlnet or video, by the inputs
   given), ``Cancel-After`` as its ``timeout_s``, submitted as the native routes submit; ``Prefer: wait[=n]``.
3. The view: Replicate's prediction shape (``status`` starting/processing/succeeded/failed/canceled, ``output`` a
   list of URLs, ``logs`` with a progress bar Replicate's clients parse, ``metrics.predict_time``, ``urls``), for
   answers and for webhook bodies (``core.webhooks.Deliverer`` is given :func:`webhook_body`).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api.compat.common import CURSOR, entry_for, kept_names, renamed, replicate_page, shown, validate
from api.compat.replicate_files import file_id_of_url
from api.deps import backends, tenant
from api.errors import ERROR_RESPONSES, ApiError
from api.routes.jobs import cancel_own, own_job
from api.routes.models import model_entries
from api.state import Backends
from api.submit import job_view, prefer_wait, submit_job
from core import __version__
from core.errors import InputError
from core.registry import ModelEntry
from core.schemas import MAX_TIMEOUT_S, NAME_PATTERN, JobRecord, JobStatus
from core.tasks import INFERABLE, TASKS, infer
from core.tenant_models import tenant_model_entry

router = APIRouter(prefix="/v1", dependencies=[Depends(tenant)], responses=ERROR_RESPONSES)

OWNER = "diffuserve"  # the owner a prediction names when the client gave none
STATUS = {
    JobStatus.queued: "starting",
    JobStatus.running: "processing",
    JobStatus.succeeded: "succeeded",
    JobStatus.failed: "failed",
    JobStatus.canceled: "canceled",
}
# Replicate's webhook events -> ours
EVENTS = {"start": "start", "output": "output", "logs": "progress", "completed": "completed"}
# Replicate's input names (as in its Stable Diffusion models) -> ours
INPUT_NAMES = {
    "num_outputs": "num_images",
    "prompt_strength": "strength",
    "mask": "mask_image",
    "controlnet_conditioning_scale": "controlnet_conditioning_scale",
}
THEIR_NAMES = {ours: theirs for theirs, ours in INPUT_NAMES.items()}
# Replicate's scheduler names -> ours
SCHEDULERS = {
    "DDIM": "ddim",
    "DDPM": "ddpm",
    "K_EULER": "euler",
    "K_EULER_ANCESTRAL": "euler_a",
    "DPMSolverMultistep": "dpmpp_2m",
    "KarrasDPM": "dpmpp_2m_karras",
    "PNDM": "pndm",
    "KLMS": "lms",
    "HeunDiscrete": "heun",
    "UniPCMultistep": "unipc",
}
# every field a prediction's input may set: those of the tasks it can be (computed once)
KNOWN = set().union(*(TASKS[t].request.model_fields for t in INFERABLE))
DURATION = re.compile(r"^\s*(\d{1,12}(?:\.\d{1,9})?)\s*(ms|s|m|h)?\s*$")


# -- 1. the body ----------------------------------------------------------------------------------------------------
class PredictionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: dict[str, Any] = Field(default_factory=dict, description="the model's inputs (Replicate's names or ours)")
    version: str | None = Field(None, max_length=200, description="POST /v1/predictions: a model id or owner/name:id")
    model: str | None = Field(None, max_length=200, description="POST /v1/predictions: owner/name, instead of version")
    webhook: str | None = Field(None, max_length=2048)
    webhook_completed: str | None = Field(None, max_length=2048, description="older clients: webhook for completed")
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = Field(
        None, max_length=4, description="default: output and completed"
    )
    stream: bool = False


def model_from_version(version: str, entries: list[ModelEntry]) -> tuple[str, str]:
    """(owner, model id) of a ``version``: ``owner/name:id``, ``owner/name``, a model id, or a model's sha256."""
    ref = version.strip()
    if "/" in ref:
        owner, _, rest = ref.partition("/")
        return owner, rest.partition(":")[0]
    if any(e.id == ref for e in entries):
        return OWNER, ref
    if re.fullmatch(r"[0-9a-f]{8,64}", ref):
        for e in entries:
            if e.version and e.version.startswith(ref):
                return OWNER, e.id
    raise InputError(f"unknown version {shown(version)!r}: a model id, owner/name or a model's sha256", field="version")


def cancel_after(header: str | None) -> int | None:
    """``Cancel-After: 30s | 5m | 1h | 250ms | 30`` -> whole seconds (rounded up), more than 0 and at most the
    service's longest timeout; anything else (unparsable, negative, zero, infinite, too large) is a 422 naming it."""
    if header is None:
        return None
    m = DURATION.match(header) if len(header) <= 32 else None
    if m is None:
        raise InputError("a duration such as 30s, 5m or 1h", field="Cancel-After")
    seconds = float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise InputError(f"more than 0 and at most {MAX_TIMEOUT_S} s", field="Cancel-After")
    return math.ceil(seconds)


# -- 2. the job -----------------------------------------------------------------------------------------------------
def to_request(model_id: str, entry: ModelEntry, body: PredictionBody, timeout_s: int | None, base_url: str = ""):
    """(task, typed request, input names ignored: every one, of which the record keeps MAX_NAMES). An input that is
    the URL of one of this service's files (``urls.get``, as Replicate's clients pass an uploaded file) becomes
    that upload's id, read and checked as every upload id is (the tenant's own only); no URL is fetched."""
    data: dict[str, Any] = {"model": model_id}
    ignored = []
    for name, value in body.input.items():
        ours = INPUT_NAMES.get(name, name)
        if isinstance(value, str) and base_url:
            value = file_id_of_url(value, base_url) or value
        if ours in ("model", "webhook", "webhook_events_filter"):
            ignored.append(name)
        elif ours in KNOWN:
            data[ours] = value
        else:
            ignored.append(name)
    if isinstance(data.get("scheduler"), str):
        data["scheduler"] = SCHEDULERS.get(data["scheduler"], data["scheduler"])
    if data.get("seed") in (-1, ""):
        data["seed"] = None
    task = infer({k for k, v in data.items() if v}, entry)  # image: img2img, mask_image: inpaint, ...
    allowed = task.request.model_fields
    ignored += [THEIR_NAMES.get(k, k) for k in list(data) if k not in allowed]
    data = {k: v for k, v in data.items() if k in allowed}
    if timeout_s is not None:
        given = data.get("timeout_s")
        data["timeout_s"] = min(timeout_s, given) if isinstance(given, int) and given > 0 else timeout_s
    webhook = body.webhook or body.webhook_completed
    if webhook:
        data["webhook"] = webhook
        events = body.webhook_events_filter or (["completed"] if body.webhook_completed else ["output", "completed"])
        data["webhook_events_filter"] = [EVENTS[e] for e in events]
    names = {**THEIR_NAMES, "webhook_events_filter": "webhook_events_filter"}
    return task, validate(task.request, data, {k: f"input.{v}" for k, v in names.items()}), ignored


async def create(request: Request, b: Backends, t: str, owner: str, model_id: str, body: PredictionBody):
    if not re.match(NAME_PATTERN, model_id):
        raise InputError(f"unknown model {shown(model_id)!r}", field="model")
    timeout_s = cancel_after(request.headers.get("cancel-after"))
    wait = prefer_wait(request.headers.get("prefer"), b.settings.max_wait_s)
    names = {k: f"input.{v}" for k, v in THEIR_NAMES.items()}
    if timeout_s is not None:
        names["timeout_s"] = "Cancel-After"  # the family's cap refuses the header's value
    # a synchronous wait holds its slot before the job is submitted: a 429 leaves no job behind
    with b.waiters.held(t) if wait is not None else nullcontext():
        try:
            entry = await run_in_threadpool(entry_for, b, t, model_id)
            task, req, ignored = to_request(model_id, entry, body, timeout_s, str(request.base_url))
            kept, more = kept_names(ignored)
            via = {"api": "replicate", "owner": shown(owner), "ignored": kept, "ignored_more": more,
                   "cancel_after": timeout_s}  # fmt: skip
            job, created = await submit_job(request, b, t, task, req, via=via)
        except InputError as e:
            raise renamed(e, names) from None
        headers = {"Location": f"/v1/predictions/{job.id}"}
        if wait is not None:
            job = await b.waiters.until_terminal(t, job, wait, b.store.jobs.get, held=True)
            headers["Preference-Applied"] = f"wait={wait:g}"
    return JSONResponse(view(job, b, str(request.base_url)), status_code=201 if created else 200, headers=headers)


# -- 3. the view ----------------------------------------------------------------------------------------------------
def _logs(data: dict, via: dict) -> str:
    ignored, more = kept_names(via.get("ignored") or [])  # records made before the bound are bounded on read
    more += via.get("ignored_more") or 0
    lines = [f"ignored inputs: {', '.join(ignored)}" + (f" and {more} more" if more else "")] if ignored else []
    p = data.get("progress") or {}
    step, total = p.get("step", 0), p.get("total", 0)
    if total:
        pct = int(100 * step / total)
        bar = "█" * (pct // 10) + " " * (10 - pct // 10)
        lines.append(f"{pct:3d}%|{bar}| {step}/{total}")  # the tqdm line Replicate's clients parse as progress
    if data.get("error"):
        lines.append(f"error: {data['error']['code']}: {data['error']['message']}")
    return "\n".join(lines)


def prediction(data: dict, via: dict | None, base_url: str) -> dict:
    """A job (public dict, output items with ``url``) in Replicate's prediction shape."""
    via = via or {}
    model = (data.get("model") or {}).get("id") or data.get("type")
    base = base_url.rstrip("/")
    status = STATUS[JobStatus(data["status"])]
    err = data.get("error")
    if status == "failed" and err and err["code"] == "deadline_exceeded" and via.get("cancel_after"):
        status = "canceled"  # Cancel-After passed: Replicate calls that canceled
    metrics = data.get("metrics") or {}
    urls = {
        "get": f"{base}/v1/predictions/{data['id']}",
        "cancel": f"{base}/v1/predictions/{data['id']}/cancel",
        "stream": f"{base}/v1/predictions/{data['id']}/stream",
        "web": f"{base}/v1/jobs/{data['id']}",
    }
    return {
        "id": data["id"],
        "model": f"{shown(via.get('owner', OWNER))}/{model}",
        "version": (data.get("model") or {}).get("sha256") or model,
        "input": data.get("input"),
        "output": [o["url"] for o in data.get("output", []) if o.get("url")] if status == "succeeded" else None,
        "status": status,
        "error": f"{err['code']}: {err['message']}" if err else None,
        "logs": _logs(data, via),
        "metrics": {
            "predict_time": _seconds(metrics.get("device_ms") or metrics.get("inference_ms")),
            "total_time": (metrics.get("total_ms") or 0) / 1000 if metrics.get("total_ms") else None,
        },
        "created_at": data.get("created_at"),
        "started_at": data.get("started_at"),
        "completed_at": data.get("finished_at"),
        "source": "api",
        "data_removed": False,
        "urls": urls,
    }


def view(job: JobRecord, b: Backends, base_url: str) -> dict:
    return prediction(job_view(job, b, base_url), job.via, base_url)


def webhook_body(data: dict, delivery: dict) -> dict:
    """The webhook body of a prediction: the prediction itself, as Replicate sends it."""
    return prediction(data, delivery.get("via"), delivery.get("base_url") or "")


# -- routes ---------------------------------------------------------------------------------------------------------
async def creation_headers(
    prefer: str | None = Header(None, description="wait or wait=N (N ≤ 60): answer the finished prediction"),
    cancel_after: str | None = Header(None, alias="Cancel-After", description="30s, 5m, 1h: the job's timeout_s"),
) -> None:
    """Documents the headers a creation reads (``create`` reads them from the request itself)."""


@router.post("/models/{owner}/{name}/predictions", status_code=201, name="replicate_create_model_prediction")
async def create_model_prediction(
    request: Request,
    owner: str,
    name: str,
    body: PredictionBody,
    t: str = Depends(tenant),
    b: Backends = Depends(backends),
    _: None = Depends(creation_headers),
):
    """Replicate's ``replicate.run("owner/name", input)``: any owner; ``name`` is our model id."""
    return await create(request, b, t, owner[:64], name, body)


@router.post("/predictions", status_code=201, name="replicate_create_prediction")
async def create_prediction(
    request: Request,
    body: PredictionBody,
    t: str = Depends(tenant),
    b: Backends = Depends(backends),
    _: None = Depends(creation_headers),
):
    """A prediction of ``version`` (a model id, ``owner/name:id`` or a model's sha256) or ``model`` (owner/name)."""
    ref = body.version or body.model
    if not ref:
        raise InputError("give version or model", field="version")
    entries = await run_in_threadpool(model_entries, b, t)  # the tenant's own trained models too
    owner, model_id = model_from_version(ref, entries)
    return await create(request, b, t, owner[:64], model_id, body)


@router.get("/predictions/{prediction_id}", name="replicate_get_prediction")
async def get_prediction(
    request: Request, prediction_id: str, t: str = Depends(tenant), b: Backends = Depends(backends)
):
    job = await run_in_threadpool(own_job, b, t, prediction_id, "prediction")
    return view(job, b, str(request.base_url))


@router.get("/predictions", name="replicate_list_predictions")
async def list_predictions(
    request: Request,
    cursor: int = CURSOR,
    t: str = Depends(tenant),
    b: Backends = Depends(backends),
):
    """The tenant's predictions (every job), newest first, 100 a page: ``results``, ``next``, ``previous``."""
    size = 100
    jobs = await run_in_threadpool(b.store.jobs.list, t, size + 1, cursor)
    results = [view(j, b, str(request.base_url)) for j in jobs[:size]]
    return replicate_page(results, request, "/v1/predictions", cursor, size, len(jobs) > size)


@router.post("/predictions/{prediction_id}/cancel", name="replicate_cancel_prediction")
async def cancel_prediction(
    request: Request, prediction_id: str, t: str = Depends(tenant), b: Backends = Depends(backends)
):
    job = await run_in_threadpool(cancel_own, b, t, prediction_id, "prediction")
    return view(job, b, str(request.base_url))


@router.get(
    "/predictions/{prediction_id}/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "output, logs and done events"}},
    name="replicate_stream_prediction",
)
async def stream_prediction(
    request: Request, prediction_id: str, t: str = Depends(tenant), b: Backends = Depends(backends)
):
    """Replicate's server-sent events: ``logs`` as progress changes, each output URL as ``output``, then ``done``."""
    job = await run_in_threadpool(own_job, b, t, prediction_id, "prediction")
    base = str(request.base_url)
    b.waiters.check(t)

    async def events():
        nonlocal job
        last = None
        async with b.waiters.watch(t, job.id) as changed:
            while True:
                changed.clear()
                job = await run_in_threadpool(b.store.jobs.get, job.id) or job
                p = view(job, b, base)
                if p["logs"] != last:
                    last = p["logs"]
                    yield f"event: logs\nid: {job.id}\ndata: {p['logs'].splitlines()[-1] if p['logs'] else ''}\n\n"
                if job.status.is_terminal():
                    for url in p["output"] or []:
                        yield f"event: output\nid: {job.id}\ndata: {url}\n\n"
                    if p["error"]:
                        yield f"event: error\nid: {job.id}\ndata: {json.dumps({'detail': p['error']})}\n\n"
                    done = {} if p["status"] == "succeeded" else {"reason": p["status"]}
                    yield f"event: done\nid: {job.id}\ndata: {json.dumps(done)}\n\n"
                    return
                try:
                    await asyncio.wait_for(changed.wait(), 15)
                except TimeoutError:
                    yield ": keepalive\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/webhooks/default/secret", name="replicate_webhook_secret")
async def webhook_secret(t: str = Depends(tenant), b: Backends = Depends(backends)) -> dict:
    """Replicate's path to the tenant's webhook signing key (the same as GET /v1/webhooks/secret)."""
    from core.webhooks import tenant_secret

    return {"key": tenant_secret(b.settings.resolved_webhook_secret(), t)}


def _model_view(owner: str, entry: ModelEntry, base: str, visibility: str = "public") -> dict:
    version = entry.version or entry.id
    return {
        "url": f"{base}/v1/models/{owner}/{entry.id}",
        "owner": owner,
        "name": entry.id,
        "description": f"{entry.kind.value} model; tasks: {', '.join(entry.tasks)}",
        "visibility": visibility,
        "run_count": 0,
        "latest_version": _version_view(entry, version),
    }


def _version_view(entry: ModelEntry, version: str) -> dict:
    return {
        "id": version,
        "created_at": _created_at(entry),  # the clients' Version model requires both
        "cog_version": f"diffuserve {__version__}",
        "openapi_schema": {  # the output: a list of file URLs (not an iterator: run() returns it whole)
            "components": {"schemas": {"Output": {"type": "array", "items": {"type": "string", "format": "uri"}}}}
        },
    }


def _created_at(entry: ModelEntry) -> str:
    """When the model's files were written (a hub id, or a tenant's model without them here: the epoch)."""
    path = entry.single_file.path if entry.single_file is not None else entry.path
    try:
        mtime = Path(path).stat().st_mtime if path else 0.0
    except OSError:
        mtime = 0.0
    return datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z")


async def _model_or_404(b: Backends, t: str, name: str) -> tuple[ModelEntry, str]:
    """(entry, visibility): the tenant's own model (private) or a served one (public); 404 when there is none."""

    def find() -> tuple[ModelEntry, str]:
        entry = entry_for(b, t, name)
        return entry, "private" if tenant_model_entry(b.store.registrations, t, name) is not None else "public"

    try:
        return await run_in_threadpool(find)
    except InputError:
        raise ApiError(404, "not_found", f"no model {shown(name)!r}", "name") from None


@router.get("/models/{owner}/{name}", name="replicate_get_model")
async def get_model(request: Request, owner: str, name: str, t: str = Depends(tenant), b: Backends = Depends(backends)):
    entry, visibility = await _model_or_404(b, t, name)
    return _model_view(owner[:64], entry, str(request.base_url).rstrip("/"), visibility)


@router.get("/models/{owner}/{name}/versions/{version_id}", name="replicate_get_version")
async def get_version(
    owner: str, name: str, version_id: str, t: str = Depends(tenant), b: Backends = Depends(backends)
):
    entry, _ = await _model_or_404(b, t, name)
    if version_id not in (entry.id, entry.version):
        raise ApiError(404, "not_found", f"no version {shown(version_id)!r} of {shown(name)!r}", "version_id")
    return _version_view(entry, version_id)


def _seconds(ms: float | None) -> float | None:
    """Replicate's ``metrics.predict_time``: the job's device time (``device_ms``), in seconds."""
    return ms / 1000 if ms else None
