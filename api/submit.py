"""Job submission over HTTP: idempotency headers, the typed request admitted by core (``core/tasks/admission.py``),
all-or-nothing queuing, the 202 answer. HTTP only."""

from __future__ import annotations

import hashlib
import re
from contextlib import nullcontext

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import check_rate
from api.state import Backends
from core.errors import InputError
from core.jobs import lifecycle, usage
from core.schemas import JobRecord
from core.tasks import Task
from core.tasks.admission import Inputs, admit


def job_view(job: JobRecord, b: Backends, base_url: str) -> dict:
    """The public envelope, with output keys turned into URLs the client can GET."""
    data = job.public()
    for item in data["output"]:
        key = item.pop("key", None)
        if key:
            item["url"] = b.storage.url(key, base_url)
    return data


def inputs(b: Backends) -> Inputs:
    s = b.settings
    return Inputs(
        b.store,
        b.storage,
        b.registry,
        s.max_body_bytes,
        s.max_image_pixels,
        s.job_ttl_s,
        s.webhook_allow_private,
        s.grid_max_total_steps,
        b.tenants,
    )


def _submit(
    b: Backends,
    tenant: str,
    task: Task,
    body: BaseModel,
    idempotency: tuple[str, str] | None,
    base_url: str,
    via: dict | None = None,
) -> tuple[JobRecord, bool]:
    """The blocking part, in one threadpool call: the rate limit, the inputs (uploads saved), create and enqueue."""
    check_rate(b, tenant)
    policy = b.tenants.of(tenant)
    usage.check_quota(b.store.usage, tenant, policy.device_seconds_per_day)  # 429 until the UTC day ends
    request, model, hashes = admit(inputs(b), tenant, task, body)
    job = lifecycle.new_job(task.type, request.model_dump(mode="json"), tenant, model, task.queue, policy.weight)
    job.input_sha256 = hashes
    job.base_url = base_url  # what output URLs in webhooks are built on (local storage)
    job.via = via
    return lifecycle.submit(b.store, b.queue, job, idempotency, policy.max_active_jobs)


def idempotency_of(request: Request, task: Task, body: BaseModel) -> tuple[str, str] | None:
    """(Idempotency-Key, hash of the typed request) when the client sent the header."""
    idem_key = request.headers.get("idempotency-key")
    if idem_key is None:
        return None
    if not 1 <= len(idem_key) <= 255:
        raise InputError("must be 1 to 255 characters", field="Idempotency-Key")
    return idem_key, hashlib.sha256(f"{task.type.value}\n{body.model_dump_json()}".encode()).hexdigest()


async def submit_job(
    request: Request,
    b: Backends,
    tenant: str,
    task: Task,
    body: BaseModel,
    via: dict | None = None,
    idempotency: tuple[str, str] | None | bool = True,
) -> tuple[JobRecord, bool]:
    """Queue one job as every route does (rate limit, validation, idempotency, quotas): the compatibility adapters'
    way in, so they never grow a second execution path. ``idempotency``: True reads the request's Idempotency-Key;
    else (key, request hash) or None, as the caller derived it (one call of several jobs keys each)."""
    if idempotency is True:
        idempotency = idempotency_of(request, task, body)
    args = (b, tenant, task, body, idempotency, str(request.base_url), via)
    if light(b, body):
        return _submit(*args)
    return await run_in_threadpool(_submit, *args)


def light(b: Backends, body: BaseModel) -> bool:
    """The submission touches memory only (the in-memory store, a model already scanned, no image to read or decode,
    no webhook host to resolve), so it runs on the loop: a thread hop costs more than it. Anything naming an image, an
    upload or a webhook, or a model the registry would rescan its folders (and hash new checkpoints) to find, runs in
    the threadpool."""
    if b.settings.distributed:
        return False
    model = getattr(body, "model", None) or getattr(body, "base_model", None)
    if not isinstance(model, str) or not b.registry.known(model):
        return False
    if getattr(body, "webhook", None):  # admission resolves its host (the SSRF rules): DNS, never on the loop
        return False
    text = body.model_dump_json()
    return '"data:' not in text and '"upl_' not in text and len(text) < 16384


async def submit(request: Request, b: Backends, tenant: str, task: Task, body: BaseModel) -> JSONResponse:
    idempotency = idempotency_of(request, task, body)
    wait = prefer_wait(request.headers.get("prefer"), b.settings.max_wait_s)
    # a synchronous wait is an open wait, held before the job is submitted: a 429 (past MAX_WAITS_PER_TENANT)
    # leaves no job behind
    with b.waiters.held(tenant) if wait is not None else nullcontext():
        job, created = await submit_job(request, b, tenant, task, body, idempotency=idempotency)
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        status = 202
        if wait is not None:
            job = await b.waiters.until_terminal(tenant, job, wait, b.store.jobs.get, held=True)
            if job.status.is_terminal():
                status = 201 if created else 200  # the finished job; 200 on an idempotent replay
            headers["Preference-Applied"] = f"wait={wait:g}"
    return JSONResponse(job_view(job, b, str(request.base_url)), status_code=status, headers=headers)


PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:\s*=\s*(\d+(?:\.\d+)?))?\s*(?:$|[,;])", re.IGNORECASE)


def prefer_wait(header: str | None, max_wait_s: float) -> float | None:
    """Seconds to wait from ``Prefer: wait[=N]`` (RFC 7240; N capped at ``max_wait_s``, bare ``wait`` means the cap),
    or None when the client did not ask."""
    if not header:
        return None
    m = PREFER_WAIT.search(header)
    if m is None:
        return None
    return min(float(m.group(1)), max_wait_s) if m.group(1) is not None else max_wait_s
