"""A gateway process (embedded mode) with the bundled engine models and the tiny diffusers pipelines, for the
AUTOMATIC1111 and Replicate clients to talk to over HTTP as they would to those services."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import embedded_gateway

KEY_A, KEY_B = "key-acme", "key-globex"


@pytest.fixture(scope="package")
def gateway(tiny_models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compat")
    with embedded_gateway(
        tmp,
        tiny_models_dir,
        API_KEYS=f"acme:{KEY_A},globex:{KEY_B}",
        WEBHOOK_ALLOW_PRIVATE="true",  # the test's receiver is on loopback
        WEBHOOK_BACKOFF_S="0.5",
    ) as url:
        yield url


def png_b64(w: int = 64, h: int = 64, seed: int = 0, mode: str = "RGB") -> str:
    import base64

    shape = (h, w, 3) if mode == "RGB" else (h, w)
    a = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("L") if image.mode not in ("L", "RGB") else image).astype(np.int16)
