"""Dependencies: the backends, the caller's tenant (API key), rate limits.

``backends`` and ``tenant`` are ``async`` though they never await: FastAPI runs a plain ``def`` dependency in its
threadpool, a hop that cost each request more than the work it does. Store calls (``check_rate``) are blocking
and run in the threadpool, once per request, alongside the route's own store work."""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from api.errors import ApiError
from api.state import Backends

DEFAULT_TENANT = "default"


async def backends(request: Request) -> Backends:
    return request.app.state.backends


CHALLENGE = {"WWW-Authenticate": 'Bearer, Basic realm="diffuserve"'}


def _key_of(auth: str) -> str:
    """The API key of an ``Authorization`` header: ``Bearer <key>``, ``Token <key>`` (older Replicate clients) or
    HTTP basic with the key as the password (AUTOMATIC1111's clients), any user name."""
    scheme, _, value = auth.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme in ("bearer", "token"):
        return value
    if scheme == "basic" and value:
        try:
            _, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return password if sep else ""
    return ""


async def tenant(request: Request, b: Backends = Depends(backends)) -> str:
    """With API_KEYS set, every /v1 route needs ``Authorization: Bearer <key>`` (or the key as the HTTP basic
    password); the key names the tenant."""
    if not b.tenants_by_key:
        return DEFAULT_TENANT
    key = _key_of(request.headers.get("authorization", ""))
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send Authorization: Bearer <key> (or the key as the HTTP basic password)",
            "Authorization",
            CHALLENGE,
        )
    for known, name in b.tenants_by_key.items():
        if hmac.compare_digest(known.encode(), key.strip().encode()):
            return name
    raise ApiError(401, "unauthorized", "unknown API key", "Authorization", CHALLENGE)


def check_rate(b: Backends, t: str) -> None:
    """Job submissions and uploads: at most RATE_LIMIT_PER_MINUTE per tenant (fixed one-minute windows). Blocking."""
    wait = b.store.limits.rate_limit(f"tenant:{t}", b.settings.rate_limit_per_minute, 60)
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            f"over {b.settings.rate_limit_per_minute} requests per minute",
            None,
            {"Retry-After": str(max(1, int(wait + 0.999)))},
        )


async def rate_limited(t: str = Depends(tenant), b: Backends = Depends(backends)) -> str:
    await run_in_threadpool(check_rate, b, t)
    return t
