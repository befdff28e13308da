"""Dependencies: the backends, the caller's tenant (API key), rate limits."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from api.errors import ApiError
from api.state import Backends

DEFAULT_TENANT = "default"


def backends(request: Request) -> Backends:
    return request.app.state.backends


def tenant(request: Request, b: Backends = Depends(backends)) -> str:
    """With API_KEYS set, every /v1 route needs ``Authorization: Bearer <key>``; the key names the tenant."""
    if not b.tenants_by_key:
        return DEFAULT_TENANT
    auth = request.headers.get("authorization", "")
    scheme, _, key = auth.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send Authorization: Bearer <key>",
            "Authorization",
            {"WWW-Authenticate": "Bearer"},
        )
    for known, name in b.tenants_by_key.items():
        if hmac.compare_digest(known.encode(), key.strip().encode()):
            return name
    raise ApiError(401, "unauthorized", "unknown API key", "Authorization", {"WWW-Authenticate": "Bearer"})


def rate_limited(t: str = Depends(tenant), b: Backends = Depends(backends)) -> str:
    """Job submissions and uploads: at most RATE_LIMIT_PER_MINUTE per tenant (fixed one-minute windows)."""
    wait = b.store.limits.rate_limit(f"tenant:{t}", b.settings.rate_limit_per_minute, 60)
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            f"over {b.settings.rate_limit_per_minute} requests per minute",
            None,
            {"Retry-After": str(max(1, int(wait + 0.999)))},
        )
    return t
