"""ComfyUI's MASK inputs as the v1 inpaint request's ``mask_image`` (white is repainted): the mask a ``LoadImage``
(1 - alpha) or ``LoadImageMask`` (a channel; alpha inverted) reads from an upload, rounded and grown as
``VAEEncodeForInpaint`` does. PIL only (the gateway has no numpy); the image was checked when it was uploaded."""

from __future__ import annotations

import io

from PIL import Image, ImageChops, ImageFilter, ImageOps

CHANNELS = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}


def read_mask(data: bytes, kind: str, channel: str) -> Image.Image | None:
    """The mask of an uploaded image as an ``L`` image (255 = 1.0), or None when it has none (no alpha channel:
    ComfyUI would draw with an empty 64x64 mask)."""
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened)
        if kind == "alpha_mask":  # LoadImage's MASK output
            if "A" not in image.getbands():
                return None
            return ImageChops.invert(image.getchannel("A"))
        if image.getbands() != ("R", "G", "B", "A"):  # LoadImageMask
            if image.mode == "I":
                image = image.point(lambda v: v * (1 / 255))
            image = image.convert("RGBA")
        band = image.getchannel(CHANNELS[channel])
        return ImageChops.invert(band) if channel == "alpha" else band.copy()


def _shifted(mask: Image.Image, dx: int, dy: int) -> Image.Image:
    out = Image.new("L", mask.size, 0)
    out.paste(mask, (dx, dy))
    return out


def grow(mask: Image.Image, by: int) -> Image.Image:
    """``VAEEncodeForInpaint``'s mask: rounded to 0/1, then grown as ComfyUI's ``conv2d`` with a ``by x by`` kernel of
    ones, padding ``ceil((by - 1) / 2)``, clamped and cropped to the image: a max over the window ``[-p, by - 1 - p]``
    around each pixel (symmetric for odd ``by``, one pixel more up and left for even)."""
    binary = mask.point(lambda v: 255 if v >= 128 else 0)
    if by <= 1:
        return binary
    if by % 2:
        return binary.filter(ImageFilter.MaxFilter(by))
    m = binary.filter(ImageFilter.MaxFilter(by - 1)) if by > 2 else binary
    out = m
    for dx, dy in ((1, 0), (0, 1), (1, 1)):
        out = ImageChops.lighter(out, _shifted(m, dx, dy))
    return out


def png(mask: Image.Image) -> bytes:
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def with_alpha(original: bytes, mask: bytes) -> bytes:
    """``/upload/mask``: the original image (RGBA) with the alpha channel of the mask editor's image."""
    with Image.open(io.BytesIO(original)) as o, Image.open(io.BytesIO(mask)) as m:
        out = o.convert("RGBA")
        alpha = m.convert("RGBA").getchannel("A")
        if alpha.size != out.size:
            alpha = alpha.resize(out.size)
        out.putalpha(alpha)
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=4)
    return buf.getvalue()
