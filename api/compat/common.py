"""What both adapters need: the model entry a request names, waiting for jobs without holding a thread, the bytes
of a finished job's images, the field names of a foreign API in our errors, and the bounds on what a client's
request may leave behind (names kept, keys per call, a wait slot taken before anything is submitted)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from fastapi import Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ValidationError

from api.errors import ApiError, shown
from api.state import Backends
from api.submit import submit_job
from core.errors import InputError
from core.jobs import lifecycle
from core.registry import ModelEntry
from core.schemas import NAME_PATTERN, JobRecord
from core.tasks import Task
from core.tenant_models import tenant_model_entry

SNIFF = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}
# what a call may leave in a record or echo back of the names it sent and we did not use: a prediction's record and
# every read of it stay a few KB however many unknown inputs the body held (values are never kept)
MAX_NAMES = 32
T = TypeVar("T")


def kept_names(names: Iterable[str]) -> tuple[list[str], int]:
    """(at most MAX_NAMES distinct names, each :func:`shown`, how many more there were)."""
    kept: list[str] = []
    more = 0
    for name in dict.fromkeys(names):
        if len(kept) < MAX_NAMES:
            kept.append(shown(name))
        else:
            more += 1
    return kept, more


def entry_for(b: Backends, tenant: str, model_id: str) -> ModelEntry:
    """The registry entry of ``model_id`` (the tenant's own trained models first). Blocking."""
    if not re.match(NAME_PATTERN, model_id):  # before any lookup: never a path, never quoted whole
        raise InputError(f"unknown model {shown(model_id)!r}", field="model", code="unknown_model")
    return tenant_model_entry(b.store.registrations, tenant, model_id) or b.registry.get(model_id)


def data_uri(value: str, field: str) -> str:
    """A base64 image as foreign clients send it (bare, or already a ``data:`` URI) -> a ``data:`` URI of its real
    format. The bytes then take the same checks as an upload (size, pixels, format allow-list) in validation."""
    v = value.strip()
    if v.startswith("data:"):
        return v
    try:
        head = base64.b64decode(v[:64] + "=" * (-len(v[:64]) % 4), validate=False)
    except ValueError:
        head = b""
    fmt = next((f for magic, f in SNIFF.items() if head.startswith(magic)), None)
    if fmt is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        fmt = "webp"
    if fmt is None:
        raise InputError("not a base64 PNG, JPEG or WebP image", field=field, code="invalid_image")
    return f"data:image/{fmt};base64,{v}"


def validate(model: type[BaseModel], data: dict, names: dict[str, str]) -> BaseModel:
    """``model.model_validate(data)``, a refusal naming the foreign field (``names``: our field -> theirs)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        ours = ".".join(str(p) for p in err.get("loc", ()))
        raise InputError(err.get("msg", "invalid"), field=names.get(ours.split(".")[0], shown(ours, 128))) from None


def renamed(e: InputError, names: dict[str, str]) -> InputError:
    field = names.get((e.field or "").split(".")[0], e.field) if e.field else None
    return type(e)(e.message, field=field, code=e.code)


# -- one call, several jobs: a wait slot first, one idempotency key each, nothing left running when the call fails --
def call_idempotency(request: Request, task: Task, bodies: list[BaseModel]) -> tuple[str, str] | None:
    """(the call's Idempotency-Key, a hash of every job request of the call) when the client sent the header. Job
    ``i`` is keyed ``{key}#{i}`` and holds the whole call's hash: a repeated call gets its jobs back, and the same
    key with any other call (another job, one more or one fewer) is a 409."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255:
        raise InputError("must be 1 to 255 characters", field="Idempotency-Key")
    h = hashlib.sha256(f"{task.type.value}\n{len(bodies)}".encode())
    for body in bodies:
        h.update(b"\n" + body.model_dump_json().encode())
    return key, h.hexdigest()


def seed_of_key(tenant: str, key: str, below: int) -> int:
    """The seed a call with an Idempotency-Key draws when it asked for a random one: the same on every retry, so the
    retry is the same call."""
    return int.from_bytes(hashlib.sha256(f"{tenant}\n{key}".encode()).digest()[:8], "big") % below


async def submit_all(
    request: Request, b: Backends, tenant: str, task: Task, bodies: list[BaseModel], via: dict | None
) -> list[tuple[JobRecord, bool]]:
    """Queue a call's jobs as every route does (rate limit, validation, quotas), one idempotency key per job; all or
    nothing: when one is refused, those this call created are canceled and their keys released."""
    idem = call_idempotency(request, task, bodies)
    submitted: list[tuple[JobRecord, bool]] = []
    try:
        for i, body in enumerate(bodies):
            key = (f"{idem[0]}#{i}", idem[1]) if idem else None
            submitted.append(await submit_job(request, b, tenant, task, body, via, idempotency=key))
    except BaseException:
        await abandon(b, tenant, submitted, idem[0] if idem else None)
        raise
    return submitted


def _abandon(b: Backends, tenant: str, submitted: list[tuple[JobRecord, bool]], key: str | None) -> None:
    for i, (job, created) in enumerate(submitted):
        if created:  # a replayed job belongs to the call that made it
            lifecycle.cancel(b.store, job.id)
            if key is not None:
                b.store.jobs.release_idempotency(tenant, f"{key}#{i}", job.id)


async def abandon(b: Backends, tenant: str, submitted: list[tuple[JobRecord, bool]], key: str | None) -> None:
    """Cancel the jobs this call created (queued: never start; running: stop at their next step) and release their
    keys, so that a retry makes new ones. Shielded: it runs to its end when the call is being cancelled."""
    await asyncio.shield(run_in_threadpool(_abandon, b, tenant, submitted, key))


async def until_terminal(b: Backends, tenant: str, job: JobRecord, deadline: float) -> JobRecord:
    """Wait (on the event loop, woken by status events) until ``job`` ends or ``deadline`` (monotonic) passes, in the
    wait slot the caller holds (``Waiters.held``)."""
    while not job.status.is_terminal():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        job = await b.waiters.until_terminal(tenant, job, min(left, 30.0), b.store.jobs.get, held=True)
    return job


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone. The body is read by then, so the server's ``receive`` blocks until the
    connection closes (or the answer is sent)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(1.0)  # a server that answers at once instead of blocking: poll


_RUNNING: set[asyncio.Task] = set()  # calls cancelled on a disconnect, held until their cleanup ends


async def while_connected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """``await work``, cancelled when the client goes away first (its own handlers then cancel its jobs)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            _RUNNING.add(task)
            task.add_done_callback(_RUNNING.discard)
    if not task.cancelled() and task.done():
        return task.result()
    await asyncio.wait({task}, timeout=30)  # its jobs canceled before this answer, which no one reads
    raise ApiError(499, "client_closed_request", "the client went away; the call's jobs were canceled")


def image_bytes(b: Backends, job: JobRecord) -> list[bytes]:
    """The PNG bytes of a finished job's images, in output order. Blocking."""
    keys = [(o.model_extra or {}).get("key") for o in job.output if o.content_type == "image/png"]
    return [b.storage.get(k) for k in keys if k]


# the ``?cursor=`` of Replicate's paginated lists (predictions, files): the offset a previous page's ``next`` gave
CURSOR = Query(0, ge=0, le=1_000_000, description="the offset a previous page's next gave")


def replicate_page(results: list, request: Request, path: str, cursor: int, size: int, more: bool) -> dict:
    """Replicate's page of a list: ``results`` and the URLs of the ``next`` and ``previous`` pages (``?cursor=``)."""
    base = str(request.base_url).rstrip("/")
    return {
        "results": results,
        "next": f"{base}{path}?cursor={cursor + size}" if more else None,
        "previous": f"{base}{path}?cursor={max(0, cursor - size)}" if cursor else None,
    }
