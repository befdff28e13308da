"""What both adapters need: the model entry a request names, waiting for jobs without holding a thread, the bytes
of a finished job's images, and the field names of a foreign API in our errors."""

from __future__ import annotations

import base64
import time

from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ValidationError

from api.state import Backends
from core.errors import InputError
from core.jobs import lifecycle
from core.registry import ModelEntry
from core.schemas import JobRecord
from core.tenant_models import tenant_model_entry

SNIFF = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}


def entry_for(b: Backends, tenant: str, model_id: str) -> ModelEntry:
    """The registry entry of ``model_id`` (the tenant's own trained models first). Blocking."""
    return tenant_model_entry(b.store, tenant, model_id) or b.registry.get(model_id)


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
        raise InputError(err.get("msg", "invalid"), field=names.get(ours.split(".")[0], ours)) from None


def renamed(e: InputError, names: dict[str, str]) -> InputError:
    field = names.get((e.field or "").split(".")[0], e.field) if e.field else None
    return type(e)(e.message, field=field, code=e.code)


async def until_terminal(b: Backends, tenant: str, job: JobRecord, deadline: float) -> JobRecord:
    """Wait (on the event loop, woken by status events) until ``job`` ends or ``deadline`` (monotonic) passes."""
    while not job.status.is_terminal():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        job = await b.waiters.until_terminal(tenant, job, min(left, 30.0), b.store.jobs.get)
    return job


def image_bytes(b: Backends, job: JobRecord) -> list[bytes]:
    """The PNG bytes of a finished job's images, in output order. Blocking."""
    keys = [(o.model_extra or {}).get("key") for o in job.output if o.content_type == "image/png"]
    return [b.storage.get(k) for k in keys if k]


async def cancel_all(b: Backends, jobs: list[JobRecord]) -> None:
    for job in jobs:
        await run_in_threadpool(lifecycle.cancel, b.store, job.id)
