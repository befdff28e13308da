"""Datasets inside zips are checked from headers, before any pixel is decoded, and refused naming the file."""

import io
import zipfile

import pytest
from PIL import Image

from core.errors import InvalidDataset
from core.training.datasets import check_images, extract_zip


def _img(w, h, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _check(tmp_path, files, resolution=64):
    root = extract_zip(_zip(files), tmp_path / "d")
    paths = sorted(p for p in root.rglob("*") if p.suffix in (".png", ".jpg", ".webp"))
    check_images(root, paths, resolution)


def test_a_good_dataset_passes(tmp_path):
    _check(tmp_path, {"a.png": _img(64, 48), "b.jpg": _img(40, 40, "JPEG"), "c.webp": _img(30, 60, "WEBP")})


def test_a_strip_is_refused_by_its_aspect_ratio(tmp_path):
    """1x20000 at resolution 512 would be scaled to 512x10,240,000 pixels: refused before decoding."""
    with pytest.raises(InvalidDataset, match=r"strip\.png: 1x20000 has an aspect ratio"):
        _check(tmp_path, {"ok.png": _img(8, 8), "strip.png": _img(1, 20000)}, resolution=512)


def test_the_pixel_limit_applies_inside_zips(tmp_path):
    from tests.api.helpers import bomb_png

    with pytest.raises(InvalidDataset, match=r"bomb\.png"):
        _check(tmp_path, {"bomb.png": bomb_png(50_000, 50_000)})


def test_many_images_at_a_high_resolution_are_refused_by_decoded_size(tmp_path):
    """10,000 tiny PNGs at 256: 7.3 GiB of float32 once decoded; refused from the count alone."""
    files = {f"{i}.png": _img(4, 4) for i in range(10_000)}
    with pytest.raises(InvalidDataset, match="GiB"):
        _check(tmp_path, files, resolution=256)


@pytest.mark.parametrize(
    "name,data",
    [("x.bmp", _img(8, 8, "BMP")), ("x.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n"), ("fake.png", b"not an image at all")],
)
def test_formats_outside_the_allow_list_are_refused(tmp_path, name, data):
    with pytest.raises(InvalidDataset, match=name.replace(".", r"\.")):
        _check(tmp_path, {"ok.png": _img(8, 8), name: data})
