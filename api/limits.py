"""Request-body limits, enforced before a body is read whole (ASGI middleware)."""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """An HTTPException, so that FastAPI's body parsing re-raises it as it is (413), not as a 400."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes")


def _declared_refusal(scope: Scope, limit: int) -> tuple[int, str, str | None] | None:
    """The refusal (status, code, message) of a request that declares a Content-Length over ``limit`` or garbled, in
    any of its Content-Length headers; None when each one it declares is within the limit."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                if int(value) > limit:
                    return 413, "too_large", None
            except ValueError:
                return 400, "bad_request", "invalid Content-Length"
    return None


class BodySizeLimit:
    """Refuse bodies over the limit: at once from Content-Length, or while streaming a chunked body."""

    def __init__(self, app: ASGIApp, default_limit: int, limits_by_prefix: dict[str, int]):
        self.app = app
        self.default_limit = default_limit
        self.limits_by_prefix = limits_by_prefix

    def _limit(self, path: str) -> int:
        for prefix, limit in self.limits_by_prefix.items():
            if path.startswith(prefix):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self._limit(scope["path"])
        refusal = _declared_refusal(scope, limit)
        if refusal is not None:
            return await self._refuse(send, limit, *refusal)
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int, status: int = 413, code: str = "too_large", message: str | None = None):
        body = json.dumps(
            {"error": {"code": code, "message": message or f"request body over {limit} bytes", "field": "body"}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
