"""Image headers at the boundary: only PNG, JPEG and WebP, read from the first MiB."""

import io

import numpy as np
import pytest
from PIL import Image

from core.errors import InputError, TooLarge
from core.images import inspect_image
from tests.api.helpers import bomb_png


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_give_their_size(fmt):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(buf, format=fmt)
    assert inspect_image(buf.getvalue(), "f", 10**6) == (40, 30, fmt.lower())


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "EPS"])
def test_other_formats_are_refused(fmt):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format=fmt)
    with pytest.raises(InputError) as e:
        inspect_image(buf.getvalue(), "f", 10**6)
    assert e.value.code == "invalid_image" and e.value.field == "f"


def test_a_jpeg_of_comment_markers_is_refused_from_its_first_mib():
    """50 MB of COM segments before any frame header: refused without parsing them all."""
    data = b"\xff\xd8" + b"\xff\xfe\x00\x04ab" * (50 * 2**20 // 6)
    with pytest.raises(InputError, match="first 1 MiB"):
        inspect_image(data, "file", 4096 * 4096)


def test_declared_size_over_the_limit():
    with pytest.raises(TooLarge) as e:
        inspect_image(bomb_png(), "image", 4096 * 4096)
    assert e.value.code == "image_too_large"
