"""Image inputs at the boundary (torch-free): decode data: URIs, read only the header to refuse
decompression bombs before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io
import re

from core.errors import InputError

DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[\w.-]+)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S)


def decode_data_uri(uri: str, field: str, max_bytes: int) -> bytes:
    m = DATA_URI.match(uri)
    if not m or not m.group("b64"):
        raise InputError("must be a base64 data: URI (data:image/png;base64,...)", field=field)
    payload = m.group("data")
    if len(payload) * 3 // 4 > max_bytes:
        raise InputError(f"image is larger than {max_bytes} bytes", field=field, code="too_large", status=413)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"invalid base64 ({e})", field=field) from e


def inspect_image(data: bytes, field: str, max_pixels: int) -> tuple[int, int, str]:
    """Return (width, height, format) from the header alone; refuse non-images and huge declared sizes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header, decodes nothing
            w, h = im.size
            fmt = (im.format or "").lower()
    except Image.DecompressionBombError as e:
        raise InputError(f"image declares too many pixels ({e})", field=field, code="image_too_large", status=413) from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError("not a decodable image (PNG, JPEG, WebP, ...)", field=field, code="invalid_image") from e
    if w < 1 or h < 1:
        raise InputError("image has no pixels", field=field, code="invalid_image")
    if w * h > max_pixels:
        raise InputError(
            f"image declares {w}x{h} = {w * h} pixels, over the limit of {max_pixels}",
            field=field,
            code="image_too_large",
            status=413,
        )
    return w, h, fmt
