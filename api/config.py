"""Gateway settings, read once from the environment when the app is created."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    broker_url: str | None = Field(None, description="Redis URL: distributed mode (Celery + Redis job store)")
    redis_url: str | None = Field(None, description="job-store Redis; default: BROKER_URL")
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_region: str | None = Field(None, validation_alias="AWS_DEFAULT_REGION")
    s3_prefix: str = ""
    url_expires_s: int = Field(3600, ge=1, le=7 * 24 * 3600)
    data_dir: Path = REPO / "data"
    signing_key: str = Field(default_factory=lambda: secrets.token_hex(32))
    api_keys: str = Field("", description="tenant:key,tenant:key")
    rate_limit_per_minute: int = Field(600, ge=1)
    models_dir: Path | None = None
    models_config: Path | None = Field(None, description="JSON file naming hub ids (see core/registry.py)")
    pipeline_budget_mb: int | None = Field(None, description="memory the warm pipeline cache may hold; default 80% VRAM / 50% RAM")
    bundled_models_dir: Path = REPO / "models"
    max_body_bytes: int = 25 * 1024 * 1024
    max_upload_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_wait_s: float = 60.0
    lease_ttl_s: float = 15.0
    heartbeat_s: float = 3.0
    max_attempts: int = 3
    reaper_interval_s: float = 5.0
    visibility_timeout_s: int = 3600
    warm_models: str = "digits"
    torch_threads: int = 0

    @field_validator("broker_url", "redis_url")
    @classmethod
    def _redis(cls, v: str | None) -> str | None:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return v or None

    @property
    def distributed(self) -> bool:
        return bool(self.broker_url)

    def tenants_by_key(self) -> dict[str, str]:
        out = {}
        for item in filter(None, (s.strip() for s in self.api_keys.split(","))):
            tenant, sep, key = item.partition(":")
            if not sep or not tenant or not key:
                raise ValueError("API_KEYS: expected tenant:key pairs separated by commas")
            out[key] = tenant
        return out
