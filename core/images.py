"""Image inputs at the boundary (torch-free): decode data: URIs, read only the header to refuse
decompression bombs before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io
import re

from core.catalog import IMAGE_FORMATS
from core.errors import InputError, TooLarge

HEADER_BYTES = 1 << 20
DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[\w.-]+)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S
)


def decode_data_uri(uri: str, field: str, max_bytes: int) -> bytes:
    m = DATA_URI.match(uri)
    if not m or not m.group("b64"):
        raise InputError("must be a base64 data: URI (data:image/png;base64,...)", field=field)
    payload = m.group("data")
    if len(payload) * 3 // 4 > max_bytes:
        raise TooLarge(f"image is larger than {max_bytes} bytes", field=field)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"invalid base64 ({e})", field=field) from e


def inspect_image(data: bytes, field: str, max_pixels: int) -> tuple[int, int, str]:
    """Return (width, height, format) from the header alone; refuse non-images, formats outside PNG/JPEG/WebP (EPS
    would reach Ghostscript) and huge declared sizes."""
    from PIL import Image, UnidentifiedImageError

    try:
        # the header only, and only from the first HEADER_BYTES: a JPEG of millions of comment markers before its
        # frame header would otherwise keep the parser busy for seconds
        with Image.open(
            io.BytesIO(data[:HEADER_BYTES]), formats=[f.upper() for f in IMAGE_FORMATS]
        ) as im:  # lazy: reads the header, decodes nothing
            w, h = im.size
            fmt = (im.format or "").lower()
    except Image.DecompressionBombError as e:
        raise TooLarge(f"image declares too many pixels ({e})", field=field, code="image_too_large") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(
            f"not a PNG, JPEG or WebP image (with its header in the first {HEADER_BYTES // 2**20} MiB)",
            field=field,
            code="invalid_image",
        ) from e
    if fmt not in IMAGE_FORMATS:
        raise InputError(
            f"image format {fmt or 'unknown'!r} is not accepted; send PNG, JPEG or WebP",
            field=field,
            code="invalid_image",
        )
    if w < 1 or h < 1:
        raise InputError("image has no pixels", field=field, code="invalid_image")
    if w * h > max_pixels:
        raise TooLarge(
            f"image declares {w}x{h} = {w * h} pixels, over the limit of {max_pixels}",
            field=field,
            code="image_too_large",
        )
    return w, h, fmt
