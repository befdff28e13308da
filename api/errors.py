"""One error shape everywhere: ``{"error": {"code", "message", "field"}}``, and the one table from core's failure
taxonomy to HTTP status codes. Every response carries ``X-Request-ID``; a 500 names it and nothing else."""

from __future__ import annotations

import json
import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import (
    Conflict,
    InputError,
    JobError,
    NotFound,
    QuotaExceeded,
    ServiceError,
    TooLarge,
    Unavailable,
)
from core.schemas import ErrorResponse

log = logging.getLogger("diffuserve.api")

# core's failure taxonomy -> HTTP status (the first match wins: subclasses before their bases)
STATUS_BY_ERROR: list[tuple[type[ServiceError], int]] = [
    (TooLarge, 413),
    (InputError, 422),
    (Conflict, 409),
    (NotFound, 404),
    (QuotaExceeded, 429),
    (Unavailable, 503),
    (JobError, 422),
    (ServiceError, 400),
]

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class ApiError(Exception):
    """An HTTP-level answer decided in ``api/`` itself (auth, rate limits, routes)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, headers: dict | None = None):
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


MAX_MESSAGE = 1000  # an error never carries more of what a client sent than this (messages quote values)
MAX_QUOTED = 64


def shown(value: object, limit: int = MAX_QUOTED) -> str:
    """A client's value as an error message or a log line may quote it: printable, at most ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    cut = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cut + ("…" if len(text) > limit else "")


def error_response(status: int, code: str, message: str, field: str | None = None, headers: dict | None = None):
    field = None if field is None else field[:200]
    body = {"code": code, "message": message[:MAX_MESSAGE], "field": field}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def service_error_response(exc: ServiceError) -> JSONResponse:
    status = next(s for cls, s in STATUS_BY_ERROR if isinstance(exc, cls))
    headers = None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, int(retry_after + 0.999)))}
    return error_response(status, exc.code, exc.message, exc.field, headers)


MAX_FIELD_PART = 64  # a location may hold a key the client chose (an unknown field): never echoed whole


def _field(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    parts = [p if len(p) <= MAX_FIELD_PART else p[:MAX_FIELD_PART] + "..." for p in parts[:8]]
    return ".".join(parts) or None


def _backend_outage(exc: BaseException) -> bool:
    """A backend's own connection error that reached the gateway unwrapped (the broker's client, say)."""
    try:
        from kombu.exceptions import OperationalError

        if isinstance(exc, OperationalError):
            return True
    except ImportError:  # embedded mode may run without Celery installed
        pass
    try:
        import redis

        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return True
    except ImportError:
        pass
    return False


class CatchAll:
    """Outermost of ours: stamps ``X-Request-ID`` on every response; any exception no handler took becomes a JSON
    500 naming that id (or a 503 with ``Retry-After`` for a backend outage), never a text page or a traceback."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        started = False

        async def stamped(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if started:
                raise
            if _backend_outage(exc):
                status, code, msg, extra = (
                    503,
                    "unavailable",
                    "a backend of the service is unavailable; retry shortly",
                    [(b"retry-after", b"5")],
                )
                log.warning("request %s: backend unavailable (%s)", request_id, type(exc).__name__)
            else:
                status, code, msg, extra = 500, "internal_error", f"internal error; request id {request_id}", []
                log.exception("request %s failed", request_id)
            body = json.dumps({"error": {"code": code, "message": msg, "field": None}}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"x-request-id", request_id.encode()),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


# Replicate's routes: its clients read RFC 9457 problem details (title, detail, status) beside our error object
PROBLEM_PATHS = re.compile(r"^/v1/(predictions|files|models/[^/]+/[^/]+)(/|$)")


def _shaped(request: Request, response: JSONResponse) -> JSONResponse:
    if not PROBLEM_PATHS.match(request.url.path):
        return response
    body = json.loads(response.body)
    err = body["error"]
    detail = f"{err['field']}: {err['message']}" if err.get("field") else err["message"]
    body.update(title=err["code"], detail=detail, status=response.status_code)
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return JSONResponse(body, status_code=response.status_code, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request", "type": "invalid"}
        code = "invalid_json" if first.get("type") == "json_invalid" else "validation_error"
        msg = str(first.get("msg", "invalid"))[:500]
        if first.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        return _shaped(request, error_response(422, code, msg, _field(tuple(first.get("loc", ())))))

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        return _shaped(request, service_error_response(exc))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _shaped(request, error_response(exc.status, exc.code, exc.message, exc.field, exc.headers))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "error")
        headers = getattr(exc, "headers", None)
        return _shaped(request, error_response(exc.status_code, code, str(exc.detail), None, headers))

    app.add_middleware(CatchAll)


ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": desc}
    for status, desc in {
        401: "missing or bad API key",
        404: "unknown, or not yours",
        413: "too large",
        422: "invalid input; `field` names it",
        429: "rate limited or over a quota; see Retry-After",
        503: "a backend (job store, queue, storage) is unavailable; see Retry-After",
    }.items()
}
