"""One error shape everywhere: ``{"error": {"code", "message", "field"}}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import InputError
from core.schemas import ErrorResponse

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              409: "conflict", 413: "too_large", 415: "unsupported_media_type", 429: "rate_limited"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None, headers: dict | None = None):
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


def error_response(status: int, code: str, message: str, field: str | None = None, headers: dict | None = None):
    return JSONResponse({"error": {"code": code, "message": message, "field": field}}, status_code=status, headers=headers)


def _field(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request", "type": "invalid"}
        code = "invalid_json" if first.get("type") == "json_invalid" else "validation_error"
        msg = first.get("msg", "invalid")
        if first.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        return error_response(422, code, msg, _field(tuple(first.get("loc", ()))))

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError):
        return error_response(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), None, getattr(exc, "headers", None))


ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": desc}
    for status, desc in {
        401: "missing or bad API key",
        404: "unknown, or not yours",
        413: "too large",
        422: "invalid input; `field` names it",
        429: "rate limited; see Retry-After",
    }.items()
}
