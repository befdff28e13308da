"""What each tenant may use: its share of the workers (``weight``), the highest priority it may ask for
(``max_priority``) and its cap on active jobs. Read once at start from ``TENANTS_CONFIG`` (a JSON object: tenant ->
policy), with the defaults for every other tenant from the environment (``DEFAULT_TENANT_WEIGHT``,
``DEFAULT_MAX_PRIORITY``, ``MAX_ACTIVE_JOBS_PER_TENANT``). Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.schemas import Priority


class TenantPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(1.0, gt=0, le=1000, description="share of the workers against other tenants waiting")
    max_priority: Priority = Field("normal", description="the highest priority its jobs may ask for")
    max_active_jobs: int | None = Field(None, ge=1, description="queued + running jobs; default: the deployment's")
    device_seconds_per_day: float | None = Field(
        None, gt=0, description="device time its jobs may use per UTC day; past it a submit gets 429 quota_exceeded"
    )


class Tenants:
    """The policy of every tenant: its own from ``TENANTS_CONFIG``, else the defaults."""

    def __init__(self, default: TenantPolicy | None = None, own: dict[str, TenantPolicy] | None = None):
        self.default = default or TenantPolicy()
        self.own = own or {}

    def of(self, tenant: str) -> TenantPolicy:
        return self.own.get(tenant, self.default)

    @classmethod
    def load(cls, path: Path | None, default: TenantPolicy) -> Tenants:
        """The file's policies over ``default`` (a tenant's missing fields are the default's); a file that cannot be
        read or does not follow the schema stops the start, naming the tenant and field."""
        if path is None:
            return cls(default)
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"TENANTS_CONFIG {path}: cannot read it as JSON ({type(e).__name__})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"TENANTS_CONFIG {path}: expected an object of tenant -> policy")
        own = {}
        for tenant, fields in raw.items():
            try:
                own[str(tenant)] = TenantPolicy.model_validate({**default.model_dump(), **(fields or {})})
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"TENANTS_CONFIG {path}: tenant {tenant!r}, {where}: {err['msg']}") from None
        return cls(default, own)
