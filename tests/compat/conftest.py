"""A gateway process (embedded mode) with the bundled engine models and the tiny diffusers pipelines, for the
AUTOMATIC1111 and Replicate clients to talk to over HTTP as they would to those services."""

from __future__ import annotations

import io
import os

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Proc, free_port, gateway_cmd, wait_for

KEY_A, KEY_B = "key-acme", "key-globex"


@pytest.fixture(scope="package")
def gateway(tiny_models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compat")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "S3_BUCKET")}
    env.update(
        DATA_DIR=str(tmp / "data"),
        MODELS_DIR=str(tiny_models_dir),
        WARM_MODELS="",
        API_KEYS=f"acme:{KEY_A},globex:{KEY_B}",
        RATE_LIMIT_PER_MINUTE="100000",
        WEBHOOK_ALLOW_PRIVATE="true",  # the test's receiver is on loopback
        WEBHOOK_BACKOFF_S="0.5",
        TORCH_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    proc = Proc(gateway_cmd(port), tmp / "api.log", env=env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, what=f"gateway: {proc.tail()}")
    yield url
    proc.stop()


def png_b64(w: int = 64, h: int = 64, seed: int = 0, mode: str = "RGB") -> str:
    import base64

    shape = (h, w, 3) if mode == "RGB" else (h, w)
    a = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("L") if image.mode not in ("L", "RGB") else image).astype(np.int16)
