"""Uploads: images (header-checked) and zip archives (training data sets), size-limited, owned by the tenant."""

from __future__ import annotations

import json
import uuid

from fastapi import APIRouter, Depends, File, UploadFile
from fastapi.concurrency import run_in_threadpool

from api.deps import backends, rate_limited
from api.errors import ApiError
from api.state import Backends
from core.images import inspect_image
from core.schemas import UploadInfo
from core.storage import upload_key

router = APIRouter()
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@router.post("/uploads", status_code=201, response_model=UploadInfo)
async def upload(file: UploadFile = File(...), t: str = Depends(rate_limited), b: Backends = Depends(backends)):
    """Upload an image or a zip; use the returned id wherever a request takes an image or a dataset."""
    limit = b.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"upload over {limit} bytes", "file")
    if not data:
        raise ApiError(422, "validation_error", "the file is empty", "file")
    info = {"id": f"upl_{uuid.uuid4().hex}", "size": len(data)}
    if data.startswith(ZIP_MAGIC):
        info["content_type"] = "application/zip"
    else:
        w, h, fmt = inspect_image(data, "file", b.settings.max_image_pixels)
        info.update(content_type=f"image/{fmt or 'octet-stream'}", width=w, height=h)
    key = upload_key(t, info["id"])
    await run_in_threadpool(b.storage.put, key, data, info["content_type"])
    await run_in_threadpool(b.storage.put, key + ".json", json.dumps(info).encode(), "application/json")
    return info
