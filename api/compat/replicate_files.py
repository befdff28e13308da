"""Replicate's file API on the service's uploads: a file IS an upload (its id is the upload id, ``upl_...``), with
the same checks (header-checked images or zips, the size limit, owned by the tenant, deleted after JOB_TTL_S).

1. ``POST /v1/files``: the multipart body Replicate's clients send (``content``: the bytes with a filename and a
   content type; ``metadata``: JSON, a plain field from the Python client, a JSON blob from the JavaScript one;
   ``filename`` and ``type`` as Replicate's HTTP API documents them) -> Replicate's File object, 201.
2. ``GET /v1/files/{id}``, ``DELETE /v1/files/{id}`` (204), ``GET /v1/files`` (``{next, previous, results}``,
   newest first), and ``GET /v1/files/{id}/download``: the bytes, to their owner. ``urls.get`` names that last one,
   and a prediction input holding it resolves to the upload id (``api/compat/replicate.py``), nothing fetched.
3. The list is an index in ``Registrations`` (kind :data:`KIND`): one small record per live file, pruned when the
   upload is gone (deleted, or swept by retention), and at most :data:`MAX_FILES` live files per tenant.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from api.compat.common import CURSOR, replicate_page
from api.deps import backends, rate_limited, tenant
from api.errors import ApiError, shown
from api.routes.uploads import read_limited
from api.state import Backends
from core import uploads
from core.schemas import UPLOAD_ID_PATTERN
from core.storage import upload_key

router = APIRouter()

KIND = "replicate_file"  # the Registrations kind of the list's index
MAX_FILES = 1000  # live files a tenant may hold through this API (the index is read whole on every list and create)
MAX_METADATA_BYTES = 4096  # a file's metadata, as JSON
MAX_NAME = 255
PAGE = 100
FILE_PATH = re.compile(r"/v1/files/(upl_[0-9a-f]{32})(?:/download)?/?$")


# -- the File object ------------------------------------------------------------------------------------------------
def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts else None


def file_view(info: dict, base_url: str) -> dict:
    """An upload's metadata (its sidecar, or the index's record) as Replicate's File object."""
    base = base_url.rstrip("/")
    return {
        "id": info["id"],
        "name": info.get("name") or info["id"],
        "content_type": info["content_type"],
        "size": info["size"],
        "etag": info.get("sha256", ""),
        "checksums": {"sha256": info.get("sha256", "")},
        "metadata": info.get("metadata") or {},
        "created_at": _iso(info.get("created_at")),
        "expires_at": _iso(info.get("expires_at")),
        "urls": {"get": f"{base}/v1/files/{info['id']}/download"},
    }


def file_id_of_url(value: str, base_url: str) -> str | None:
    """The upload id a URL of this service's file API names (``urls.get``, or ``/v1/files/{id}``), when ``value`` is
    one: the same origin as ``base_url`` (the service as this request reached it) and its path. Nothing is fetched;
    any other URL is None (and refused where an image is read, as every URL is)."""
    if len(value) > 2048 or "://" not in value[:16]:
        return None
    try:
        url, base = urlsplit(value), urlsplit(base_url)
    except ValueError:
        return None
    if url.scheme.lower() != base.scheme.lower() or url.netloc.lower() != base.netloc.lower():
        return None
    prefix = base.path.rstrip("/")
    if url.query or url.fragment or not url.path.startswith(prefix + "/"):
        return None
    m = FILE_PATH.fullmatch(url.path[len(prefix) :])
    return m.group(1) if m else None


# -- the index (blocking helpers, run in the threadpool) ------------------------------------------------------------
def live_files(b: Backends, t: str, now: float | None = None) -> list[dict]:
    """The tenant's files, newest first. Entries past their expiry are checked against storage (a job that read the
    upload keeps it longer) and pruned when the upload is gone."""
    now = time.time() if now is None else now
    out = []
    for rec in b.store.registrations.registrations(t, KIND):
        if (rec.get("expires_at") or 0) <= now and not b.storage.exists(upload_key(t, rec["id"]) + ".json"):
            b.store.registrations.unregister(t, KIND, rec["id"])
            continue
        out.append(rec)
    out.sort(key=lambda r: (r.get("created_at") or 0, r["id"]), reverse=True)
    return out


def own_file(b: Backends, t: str, file_id: str) -> dict:
    """The sidecar of the tenant's upload ``file_id``; 404 when unknown, expired or another tenant's (never told
    apart)."""
    if UPLOAD_ID_PATTERN.match(file_id):
        try:
            return json.loads(b.storage.get(upload_key(t, file_id) + ".json"))
        except KeyError:
            pass
    raise ApiError(404, "not_found", f"no file {shown(file_id)!r}", "file_id")


def _save(b: Backends, t: str, data: bytes, name: str, metadata: dict) -> dict:
    if len(live_files(b, t)) >= MAX_FILES:
        raise ApiError(409, "too_many_files", f"at most {MAX_FILES} files: delete some first", "content")
    info = uploads.describe(data, "content", b.settings.max_image_pixels)  # a crafted header never stalls the loop
    now = time.time()
    info.update(name=name, metadata=metadata, created_at=now, expires_at=now + b.settings.job_ttl_s)
    info = uploads.save(b.store.retention, b.storage, t, data, info, b.settings.job_ttl_s)
    b.store.registrations.register(t, KIND, info["id"], info)  # a few hundred bytes: the File object's fields
    return info


def _delete(b: Backends, t: str, file_id: str) -> None:
    own_file(b, t, file_id)
    key = upload_key(t, file_id)
    b.storage.delete(key)
    b.storage.delete(key + ".json")
    b.store.retention.forget_expiry(f"upload:{t}/{file_id}")
    b.store.registrations.unregister(t, KIND, file_id)


# -- the body -------------------------------------------------------------------------------------------------------
async def _text(value: str | UploadFile | None, field: str) -> str | None:
    """A form field as text: a plain field, or a small part with a filename (the JavaScript client sends metadata
    as a JSON blob)."""
    if value is None or isinstance(value, str):
        return value
    raw = await value.read(MAX_METADATA_BYTES + 1)
    if len(raw) > MAX_METADATA_BYTES:
        raise ApiError(413, "too_large", f"over {MAX_METADATA_BYTES} bytes", field)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ApiError(422, "validation_error", "not UTF-8 text", field) from None


def _metadata(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise ApiError(413, "too_large", f"over {MAX_METADATA_BYTES} bytes of JSON", "metadata")
    try:
        value = json.loads(text)
    except ValueError:
        raise ApiError(422, "validation_error", "not valid JSON", "metadata") from None
    if not isinstance(value, dict):
        raise ApiError(422, "validation_error", "must be a JSON object", "metadata")
    return value


def _name(*candidates: str | None) -> str:
    for c in candidates:
        name = "".join(ch for ch in (c or "") if ch.isprintable()).strip()
        if name:
            return name[:MAX_NAME]
    return "file"


# -- routes ---------------------------------------------------------------------------------------------------------
@router.post(
    "/files",
    status_code=201,
    name="replicate_create_file",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["content"],
                        "properties": {
                            "content": {"type": "string", "format": "binary", "description": "the file"},
                            "filename": {"type": "string", "maxLength": MAX_NAME},
                            "type": {"type": "string", "description": "its content type (the bytes decide)"},
                            "metadata": {"type": "string", "description": "a JSON object, at most 4 KB"},
                        },
                    }
                }
            },
        }
    },
)
async def create_file(request: Request, t: str = Depends(rate_limited), b: Backends = Depends(backends)):
    """Replicate's ``files.create``: a PNG, JPEG or WebP image (or a zip) becomes an upload; pass ``urls.get`` (or
    the id) as a prediction's input. Deleted after JOB_TTL_S."""
    limit = b.settings.max_upload_bytes
    # a non-file field is a few KB at most; the body as a whole is bounded by the body-size middleware
    async with request.form(max_files=2, max_fields=8, max_part_size=MAX_METADATA_BYTES + 1024) as form:
        content = form.get("content")
        if not isinstance(content, UploadFile):
            raise ApiError(422, "validation_error", "send the file as the multipart part 'content'", "content")
        data = await read_limited(content, limit, "content", "file")
        metadata = _metadata(await _text(form.get("metadata"), "metadata"))
        name = _name(await _text(form.get("filename"), "filename"), content.filename)
    info = await run_in_threadpool(_save, b, t, data, name, metadata)
    return file_view(info, str(request.base_url))


@router.get("/files", name="replicate_list_files")
async def list_files(
    request: Request,
    cursor: int = CURSOR,
    t: str = Depends(tenant),
    b: Backends = Depends(backends),
):
    """The tenant's files, newest first, 100 a page: ``results``, ``next``, ``previous``."""
    files = await run_in_threadpool(live_files, b, t)
    results = [file_view(f, str(request.base_url)) for f in files[cursor : cursor + PAGE]]
    return replicate_page(results, request, "/v1/files", cursor, PAGE, len(files) > cursor + PAGE)


@router.get("/files/{file_id}", name="replicate_get_file")
async def get_file(request: Request, file_id: str, t: str = Depends(tenant), b: Backends = Depends(backends)):
    """One of the tenant's files (any upload of the tenant reads as a file)."""
    info = await run_in_threadpool(own_file, b, t, file_id)
    return file_view(info, str(request.base_url))


@router.delete("/files/{file_id}", status_code=204, name="replicate_delete_file")
async def delete_file(file_id: str, t: str = Depends(tenant), b: Backends = Depends(backends)) -> Response:
    """Delete one of the tenant's files now (a queued job that reads it then fails with input_expired)."""
    await run_in_threadpool(_delete, b, t, file_id)
    return Response(status_code=204)


@router.get(
    "/files/{file_id}/download",
    name="replicate_download_file",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}, "application/zip": {}}}},
)
async def download_file(file_id: str, t: str = Depends(tenant), b: Backends = Depends(backends)) -> Response:
    """The file's bytes (``urls.get``), to its owner."""

    def read() -> tuple[dict, bytes]:
        info = own_file(b, t, file_id)
        try:
            return info, b.storage.get(upload_key(t, file_id))
        except KeyError:
            raise ApiError(404, "not_found", f"no file {shown(file_id)!r}", "file_id") from None

    info, data = await run_in_threadpool(read)
    return Response(
        data,
        media_type=info["content_type"],
        headers={
            "Cache-Control": "private, max-age=3600",
            "X-Content-Type-Options": "nosniff",
            "ETag": f'"{info.get("sha256", "")}"',
        },  # fmt: skip
    )
