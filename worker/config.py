"""Worker settings, read once from the environment when the worker process starts."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parent.parent


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    broker_url: str = Field("redis://127.0.0.1:6379/0")
    redis_url: str | None = None
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = Field(None, validation_alias="AWS_DEFAULT_REGION")
    s3_prefix: str = ""
    data_dir: Path = REPO / "data"
    models_dir: Path | None = None
    models_config: Path | None = Field(None, description="JSON file naming hub ids (see core/registry.py)")
    pipeline_budget_mb: int | None = Field(
        None, description="memory the warm pipeline cache may hold; default 80% VRAM / 50% RAM"
    )
    bundled_models_dir: Path = REPO / "models"
    warm_models: str = "digits"
    device: str | None = None
    torch_threads: int = 0
    lease_ttl_s: float = 15.0
    heartbeat_s: float = 3.0
    max_attempts: int = 3
    reaper_interval_s: float = 5.0
    visibility_timeout_s: int = 3600
    job_ttl_s: float = Field(7 * 24 * 3600, gt=0)
    storage_retry_s: float = Field(30.0, ge=0)
    worker_name: str = Field(default_factory=lambda: f"{socket.gethostname()}")

    @field_validator("broker_url")
    @classmethod
    def _redis(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("BROKER_URL must be a redis:// URL")
        return v
