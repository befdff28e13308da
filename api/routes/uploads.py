"""Uploads: images (header-checked) and zip archives (training data sets), size-limited, owned by the tenant."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, UploadFile
from fastapi.concurrency import run_in_threadpool

from api.deps import backends, rate_limited
from api.errors import ApiError
from api.state import Backends
from core import uploads
from core.schemas import UploadInfo

router = APIRouter()


async def read_limited(file: UploadFile, limit: int, field: str, noun: str = "upload") -> bytes:
    """A multipart file part's bytes, at most ``limit`` of them read (413 past it; 422 when empty): every route that
    takes a file (``/v1/uploads``, Replicate's ``/v1/files``, ComfyUI's ``/upload/*``) reads it so."""
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"{noun} over {limit} bytes", field)
    if not data:
        raise ApiError(422, "validation_error", "the file is empty", field)
    return data


@router.post("/uploads", status_code=201, response_model=UploadInfo)
async def upload(file: UploadFile = File(...), t: str = Depends(rate_limited), b: Backends = Depends(backends)):
    """Upload a PNG, JPEG or WebP image or a zip; use the returned id wherever a request takes an image or a dataset.
    Uploads are deleted after JOB_TTL_S."""
    data = await read_limited(file, b.settings.max_upload_bytes, "file")
    # header parsing runs in a thread: a crafted file must not stall the event loop (and every other request)
    info = await run_in_threadpool(uploads.describe, data, "file", b.settings.max_image_pixels)
    return await run_in_threadpool(uploads.save, b.store.retention, b.storage, t, data, info, b.settings.job_ttl_s)
