import base64
import io
import struct
import zlib

from PIL import Image


def png_bytes(w: int = 16, h: int = 16, color: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def bomb_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A valid PNG header that declares a huge size (its pixels are never there)."""
    raw = bytearray(png_bytes(1, 1))
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4 : ihdr + 12] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(raw[ihdr : ihdr + 17])) & 0xFFFFFFFF
    raw[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(raw)


LONG_JOB = {"prompt": "3", "scheduler": "ddpm", "num_inference_steps": 1000, "num_images": 8, "seed": 1}


def wait_job(client, job_id: str, headers: dict | None = None, timeout: float = 300) -> dict:
    """Long-poll (at most 60 s a request, as the API allows) until the job is terminal or ``timeout`` passes."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}?wait=60", headers=headers or {}).json()
        if job.get("status") in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
            return job
