"""Outputs on local disk, served at HMAC-signed, expiring URLs (S3 mode hands out presigned URLs instead)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from api.deps import backends
from api.errors import ApiError
from api.state import Backends
from core.storage import LocalStorage

router = APIRouter()


@router.get("/files/{key:path}", include_in_schema=False)
async def get_file(
    key: str, expires: int = Query(...), sig: str = Query(..., max_length=128), b: Backends = Depends(backends)
):
    storage = b.storage
    if not isinstance(storage, LocalStorage):
        raise ApiError(404, "not_found", "files are served from object storage", "key")
    if not storage.verify(key, expires, sig):
        raise ApiError(403, "forbidden", "the URL is tampered with or expired", "sig")
    try:
        data = await run_in_threadpool(storage.get, key)
    except (KeyError, ValueError):
        raise ApiError(404, "not_found", "no such file", "key") from None
    return Response(
        data,
        media_type=storage.content_type(key),
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
