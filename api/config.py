"""Gateway settings, read once from the environment when the app is created."""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from core.schemas import Priority
from core.settings import ServiceSettings
from core.tenants import TenantPolicy, Tenants

WEBHOOK_SECRET_MIN_BYTES = 24


class Settings(ServiceSettings):
    """The gateway's settings: the shared ones (``core/settings.py``) and what only HTTP needs."""

    # they hold secrets (API_KEYS, SIGNING_KEY, WEBHOOK_SECRET): a refusal names the setting, never echoes its value
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    broker_url: str | None = Field(None, description="Redis URL: distributed mode (Celery + Redis job store)")
    signing_key: str | None = Field(None, description="HMAC key of local URLs; unset: DATA_DIR/signing_key, made once")
    api_keys: str = Field("", description="tenant:key,tenant:key")
    rate_limit_per_minute: int = Field(600, ge=1)
    max_body_bytes: int = 25 * 1024 * 1024
    max_upload_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_wait_s: float = 60.0
    sync_max_wait_s: float = Field(
        900.0, gt=0, description="AUTOMATIC1111 routes answer synchronously: at most this long, then 504 with job ids"
    )
    max_active_jobs_per_tenant: int = Field(64, ge=1, description="queued + running jobs per tenant; past it 429")
    tenants_config: Path | None = Field(
        None, description="JSON: tenant -> {weight, max_priority, max_active_jobs}; others get the defaults below"
    )
    default_tenant_weight: float = Field(1.0, gt=0, le=1000, description="a tenant's share of the workers")
    default_max_priority: Priority = Field("normal", description="the highest priority a tenant's job may ask for")
    default_device_seconds_per_day: float | None = Field(
        None, gt=0, description="device-seconds a tenant's jobs may use per UTC day; unset: no quota"
    )
    max_waits_per_tenant: int = Field(100, ge=1, description="open long-polls and event streams per tenant and gateway")
    redis_max_connections: int = Field(64, ge=4)
    metrics_token: str | None = Field(None, description="set: /metrics needs Authorization: Bearer <token>")
    webhook_secret: str | None = Field(
        None, description="whsec_… master key of webhook signatures; unset: DATA_DIR/webhook_secret, made once"
    )
    webhook_allow_private: bool = Field(False, description="webhooks to loopback and private addresses too")
    webhook_retry_s: float = Field(3600.0, ge=0, description="how long a webhook delivery is retried")
    webhook_backoff_s: float = Field(1.0, gt=0, description="the first retry's delay, doubling to 10 minutes")
    webhook_concurrency: int = Field(8, ge=1, le=64, description="webhook attempts in flight per gateway")
    webhook_per_tenant: int = Field(2, ge=1, description="webhook attempts in flight per tenant")
    webhook_per_host: int = Field(
        4, ge=1, description="webhook attempts in flight per receiver (host and port), at least WEBHOOK_PER_TENANT"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, le=60, description="wall-clock deadline of one webhook attempt")
    grid_max_total_steps: int = Field(
        4096, ge=1, description="denoising steps a grid's cells add up to at most (64 cells x 64 steps)"
    )
    host: str | None = Field(None, description="the address `make run` binds (HOST); a Host the gateway answers to")
    allowed_hosts: str | None = Field(
        None,
        description="Host names the gateway answers to, comma-separated (*.example.com: its subdomains; *: any); "
        "default: HOST, localhost, 127.0.0.1, [::1]. The address a connection arrived on is always allowed",
    )

    @field_validator("broker_url", "redis_url")
    @classmethod
    def _redis(cls, v: str | None) -> str | None:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return v or None

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, v: str | None) -> str | None:
        # every tenant's key is an HMAC under it (core/webhooks.py): a short or garbled master weakens them all
        if not v:
            return None
        body = v.removeprefix("whsec_")
        raw = None
        if v.startswith("whsec_") and re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", body):
            bare = body.rstrip("=")
            try:
                raw = base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
            except binascii.Error:
                raw = None
        if raw is None or len(raw) < WEBHOOK_SECRET_MIN_BYTES:
            raise ValueError(
                f"WEBHOOK_SECRET must be whsec_ followed by the base64 of at least {WEBHOOK_SECRET_MIN_BYTES} random "
                "bytes (e.g. python -c \"import base64, secrets; print('whsec_' + "
                'base64.b64encode(secrets.token_bytes(32)).decode())"), or unset'
            )
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, v: str | None) -> str | None:
        for name in filter(None, (s.strip() for s in (v or "").split(","))):
            if not re.fullmatch(r"\*|(\*\.)?[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]", name):
                raise ValueError(f"ALLOWED_HOSTS: {name[:100]!r} is not a host name (no scheme, port or path)")
        return v if v and v.strip() else None  # empty: the default

    def allowed_host_names(self) -> list[str] | None:
        """The Host names the gateway answers to, lower case; None: any (``*``)."""
        if self.allowed_hosts is None:
            names = [self.host or "", "localhost", "127.0.0.1", "[::1]"]
        else:
            names = self.allowed_hosts.split(",")
        names = [n.strip().lower().rstrip(".") for n in names if n.strip()]
        if "*" in names:
            return None
        # a bare IPv6 address (HOST=::1) is written in brackets in a Host header
        return sorted({f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names})

    @property
    def distributed(self) -> bool:
        return bool(self.broker_url)

    def resolved_signing_key(self) -> str:
        """SIGNING_KEY, else a key made once and kept in DATA_DIR (so URLs survive a restart, and gateways that share
        DATA_DIR agree); gateways on separate disks must share SIGNING_KEY, and the gateway warns when it is unset."""
        return self.signing_key or self._kept_secret("signing_key", lambda: secrets.token_hex(32))

    def resolved_webhook_secret(self) -> str:
        """WEBHOOK_SECRET, else a ``whsec_`` key made once and kept in DATA_DIR (as the signing key)."""
        from core.webhooks import new_secret

        return self.webhook_secret or self._kept_secret("webhook_secret", new_secret)

    def _kept_secret(self, name: str, make) -> str:
        path = self.data_dir / name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{name}.{secrets.token_hex(4)}")
            tmp.write_text(make())
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)  # exclusive: two gateways starting at once end up with one key
            except FileExistsError:
                pass
            tmp.unlink()
        return path.read_text().strip()

    def tenants(self) -> Tenants:
        """Every tenant's policy: TENANTS_CONFIG over the defaults (read once, at start)."""
        default = TenantPolicy(
            weight=self.default_tenant_weight,
            max_priority=self.default_max_priority,
            max_active_jobs=self.max_active_jobs_per_tenant,
            device_seconds_per_day=self.default_device_seconds_per_day,
        )
        return Tenants.load(self.tenants_config, default)

    def tenants_by_key(self) -> dict[str, str]:
        out = {}
        for item in filter(None, (s.strip() for s in self.api_keys.split(","))):
            tenant, sep, key = item.partition(":")
            if not sep or not tenant or not key:
                raise ValueError("API_KEYS: expected tenant:key pairs separated by commas")
            out[key] = tenant
        return out
