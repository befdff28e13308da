"""Uploads: what a client sent (an image, a zip), kept in storage under its tenant with a metadata sidecar, and
deleted by retention after the job TTL. Inline ``data:`` images of a job request become uploads too, so a job
record holds ids and hashes, never bytes. Torch-free."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import InputError
from core.images import decode_data_uri, inspect_image
from core.storage import Storage, upload_key

if TYPE_CHECKING:
    from core.jobs.store import Retention

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass
class ImageInput:
    """An image input checked from its header: where it will live and what it is."""

    field: str
    width: int
    height: int
    sha256: str
    upload_id: str | None = None  # None: inline bytes not saved yet
    data: bytes | None = None
    format: str = "png"


def describe(data: bytes, field: str, max_pixels: int) -> dict:
    """Metadata of an upload: a zip by its magic, else an image checked from its header (allowed formats only)."""
    info: dict = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if data.startswith(ZIP_MAGIC):
        info["content_type"] = "application/zip"
    else:
        w, h, fmt = inspect_image(data, field, max_pixels)
        info.update(content_type=f"image/{fmt}", width=w, height=h)
    return info


def save(retention: Retention, storage: Storage, tenant: str, data: bytes, info: dict, ttl_s: float) -> dict:
    """Store ``data`` as a new upload of ``tenant`` (deleted after ``ttl_s``); returns its metadata with its id."""
    info = {"id": f"upl_{uuid.uuid4().hex}", **info}
    key = upload_key(tenant, info["id"])
    storage.put(key, data, info["content_type"])
    storage.put(key + ".json", json.dumps(info).encode(), "application/json")
    retention.schedule_expiry(f"upload:{tenant}/{info['id']}", time.time() + ttl_s)
    return info


def metadata(storage: Storage, tenant: str, upload_id: str, field: str) -> dict:
    try:
        return json.loads(storage.get(upload_key(tenant, upload_id) + ".json"))
    except KeyError:
        raise InputError(f"unknown upload {upload_id!r}", field=field, code="unknown_upload") from None


def check_image(storage: Storage, tenant: str, field: str, ref: str, max_bytes: int, max_pixels: int) -> ImageInput:
    """A ``data:`` URI (decoded and checked, not yet saved) or an upload id (its metadata read)."""
    if ref.startswith("data:"):
        raw = decode_data_uri(ref, field, max_bytes)
        info = describe(raw, field, max_pixels)
        if "width" not in info:
            raise InputError("not an image", field=field, code="invalid_image")
        return ImageInput(field, info["width"], info["height"], info["sha256"], data=raw, format=info["content_type"])
    meta = metadata(storage, tenant, ref, field)
    if not meta.get("width"):
        raise InputError(f"upload {ref!r} is not an image", field=field, code="invalid_image")
    return ImageInput(field, meta["width"], meta["height"], meta.get("sha256", ""), upload_id=ref)


def save_inline(retention: Retention, storage: Storage, tenant: str, image: ImageInput, ttl_s: float) -> str:
    """The upload id of ``image``, saving inline bytes as an upload first."""
    if image.upload_id is None:
        info = {
            "size": len(image.data),
            "sha256": image.sha256,
            "content_type": image.format,
            "width": image.width,
            "height": image.height,
        }
        image.upload_id = save(retention, storage, tenant, image.data, info, ttl_s)["id"]
        image.data = None
    return image.upload_id
