"""Executors called directly, as the runner calls them: a typed request, a registry entry, a RunContext that records
what the executor told it, and the worker's warm engines over tiny models built under a fixed seed."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from core.schemas import Registration


class Ctx:
    """A RunContext with no service behind it: uploads are a dict, progress and previews are kept for the test."""

    job_id = "job_executor_test"
    tenant = "t"

    def __init__(self, uploads: dict[str, bytes] | None = None):
        self.uploads = dict(uploads or {})
        self.steps: list[tuple[int, int]] = []
        self.previews: list[tuple[int, int, bytes]] = []

    def add(self, image: Image.Image) -> str:
        """An upload of ``image`` (as PNG); returns its id."""
        upload_id = f"upl_{uuid.uuid4().hex}"
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        self.uploads[upload_id] = buf.getvalue()
        return upload_id

    def progress(self, step, total, **extra):
        self.steps.append((step, total))

    def cancelled(self):
        return False

    def preview(self, step, total, png):
        self.previews.append((step, total, png))

    def save_checkpoint(self, name, data):
        return True

    def load_checkpoint(self, name):
        return None

    def open_input(self, upload_id):
        return self.uploads[upload_id]

    def registration(self, kind: str, name: str) -> Registration | None:
        return None

    def registered(self, kind: str, name: str) -> tuple[Registration, Path] | None:
        return None

    def register(self, kind: str, name: str, folder: Path, extra: dict | None = None) -> Registration:
        raise AssertionError("an inference executor registers nothing")


def decode(artifact) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(artifact.data))).astype(int)


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def split(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Left half dark, right half light: an edge down the middle (what canny finds)."""
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:, size[0] // 2 :] = 230
    return Image.fromarray(a)
