"""ComfyUI's MASK inputs as the v1 inpaint request's ``mask_image`` (white is repainted): the mask a ``LoadImage``
(1 - alpha) or ``LoadImageMask`` (a channel; alpha inverted) reads from an upload, rounded and grown as
``VAEEncodeForInpaint`` does. PIL only (the gateway has no numpy); the image was checked when it was uploaded."""

from __future__ import annotations

import io

from PIL import Image, ImageChops, ImageOps

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


def _take(mask: Image.Image, s: int, axis: int) -> Image.Image:
    """``out[i] = mask[i + s]`` along ``axis`` (0: x, 1: y), zero past the edge."""
    out = Image.new("L", mask.size, 0)
    out.paste(mask, (-s, 0) if axis == 0 else (0, -s))
    return out


def _max_window(mask: Image.Image, lo: int, hi: int, axis: int) -> Image.Image:
    """``out[i] = max(mask[i + lo .. i + hi])`` along ``axis``, in O(log(hi - lo)) whole-image passes (doubling
    windows), so any ``grow_mask_by`` costs a few C passes, not a per-pixel window (PIL's MaxFilter is O(k^2))."""
    n = hi - lo + 1
    pad = max(-lo, hi, 0)  # a margin of zeros, so a window that starts before the edge keeps its inside part
    w, h = mask.size
    m = Image.new("L", (w + 2 * pad, h) if axis == 0 else (w, h + 2 * pad), 0)
    m.paste(mask, (pad, 0) if axis == 0 else (0, pad))
    length = 1
    while length * 2 <= n:  # m[i] = max(mask[i .. i + length - 1])
        m = ImageChops.lighter(m, _take(m, length, axis))
        length *= 2
    out = ImageChops.lighter(_take(m, lo, axis), _take(m, lo + n - length, axis))
    return out.crop((pad, 0, pad + w, h) if axis == 0 else (0, pad, w, pad + h))


def grow(mask: Image.Image, by: int) -> Image.Image:
    """``VAEEncodeForInpaint``'s mask: rounded to 0/1, then grown as ComfyUI's ``conv2d`` with a ``by x by`` kernel of
    ones, padding ``p = ceil((by - 1) / 2)``, clamped and cropped to the image: a max over the window ``[-p, by - 1 -
    p]`` around each pixel in x and in y (symmetric for odd ``by``, one pixel more up and left for even)."""
    binary = mask.point(lambda v: 255 if v >= 128 else 0)
    if by <= 1:
        return binary
    p = by // 2
    return _max_window(_max_window(binary, -p, by - 1 - p, 0), -p, by - 1 - p, 1)


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
