"""Worker settings, read once from the environment when the worker process starts."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, field_validator

from core.settings import ServiceSettings


class WorkerSettings(ServiceSettings):
    """A worker's settings: the shared ones (``core/settings.py``), a broker it must have, and its name."""

    broker_url: str = Field("redis://127.0.0.1:6379/0")
    worker_name: str = Field(default_factory=lambda: f"{socket.gethostname()}")
    alive_file: Path | None = Field(
        None,
        description="touched every ALIVE_EVERY_S while the process runs and reaches its store: a liveness probe reads "
        "its age (never `celery inspect ping`, which a busy single-slot worker cannot answer)",
    )
    alive_every_s: float = Field(10.0, gt=0)

    @field_validator("broker_url")
    @classmethod
    def _redis(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("BROKER_URL must be a redis:// URL")
        return v
