"""What a browser may do to the gateway, as ASGI middleware.

- ``BrowserGuard``: a Host the gateway does not answer to is refused (400 ``invalid_host``): a DNS-rebinding page
  reaches a local ``make run`` under its own name. A state-changing request a browser sends from another site is
  refused (403 ``cross_site_request``): a browser replays HTTP Basic credentials cross-site, and a body-less POST
  (cancel, interrupt, skip) needs no CORS preflight. Clients that are not browsers send neither ``Sec-Fetch-Site``
  nor ``Origin`` and pass.
- ``SecurityHeaders``: ``nosniff`` on every response; the playground (``/`` and ``/static``) also carries a strict
  Content-Security-Policy, ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sec-Fetch-Site values of a request the page itself made, or the user typed; same-site is refused too: another
# port of localhost, or a sibling subdomain, is another application
TRUSTED_FETCH_SITES = frozenset({"same-origin", "none"})
MAX_NAME_IN_MESSAGE = 253  # the longest DNS name


def host_name(value: str) -> str:
    """The host of a ``Host`` header: lower case, without port or trailing dot; an IPv6 address keeps its brackets."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        return v[: end + 1] if end > 0 else v
    if v.count(":") == 1:
        v = v.split(":", 1)[0]
    return v.rstrip(".")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _own_address(scope: Scope) -> str | None:
    """The address the connection arrived on, as a Host header writes it. It cannot be a rebound name: a page must
    already be served from that address to send it (a probe's pod IP, a container's own address, a test client)."""
    server = scope.get("server")
    if not server or not server[0]:
        return None
    host = str(server[0]).lower()
    try:
        mapped = ipaddress.ip_address(host)
        if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped:  # IPv4 on a dual-stack socket
            return str(mapped.ipv4_mapped)
    except ValueError:
        pass
    return _bracketed(host)


def host_allowed(name: str, allowed: list[str]) -> bool:
    """``name`` is one of ``allowed``, or a subdomain of a ``*.domain`` entry."""
    return any(name.endswith(a[1:]) if a.startswith("*.") else name == a for a in allowed)


def same_origin(origin: str, host: str) -> bool:
    """The ``Origin`` header names the host and port the request was sent to (its ``Host``); ``null`` never does."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default = 443 if parts.scheme == "https" else 80
    want = _bracketed(parts.hostname.lower()) + (f":{port}" if port and port != default else "")
    got = host.strip().lower()
    return got.removesuffix(f":{default}") == want


class BrowserGuard:
    """Refuse a Host not allowed (DNS rebinding) and a state-changing request a browser sends from another site."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str] | None):
        self.app = app
        self.allowed_hosts = allowed_hosts  # None: any

    def _host_refused(self, scope: Scope, hosts: list[str]) -> str | None:
        if self.allowed_hosts is None:
            return None
        own = _own_address(scope)
        for value in hosts:
            name = host_name(value)
            if name != own and not host_allowed(name, self.allowed_hosts):
                return name
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers: dict[str, list[str]] = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1"), []).append(v.decode("latin-1"))
        hosts = headers.get("host", [])  # none: an HTTP/1.0 client, never a browser
        refused = self._host_refused(scope, hosts)
        if scope["type"] == "websocket":
            # a handshake is judged as a state-changing request (a socket holds one of the tenant's open waits and
            # reads its progress): refused before it is accepted, which the server answers with a 403
            if refused is not None or self._cross_site(headers, hosts[0] if hosts else "") is not None:
                return await send({"type": "websocket.close", "code": 1008})
            return await self.app(scope, receive, send)
        if refused is not None:
            response = error_response(
                400,
                "invalid_host",
                f"Host {refused[:MAX_NAME_IN_MESSAGE]!r} is not one this service answers to; the operator lists "
                "the names clients use in ALLOWED_HOSTS",
                "Host",
            )
            return await response(scope, receive, send)
        if scope["method"] not in SAFE_METHODS:
            cross = self._cross_site(headers, hosts[0] if hosts else "")
            if cross is not None:
                field, reason = cross
                response = error_response(
                    403, "cross_site_request", f"refused a state-changing request from another site: {reason}", field
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    def _cross_site(headers: dict[str, list[str]], host: str) -> tuple[str, str] | None:
        """(the header, why) when a browser sent the request from another site."""
        # Sec-Fetch-Site is set by the browser and no page can forge it: when present it decides (a proxy that
        # rewrites Host does not matter then); browsers leave it out on plain http to other than localhost, and
        # there Origin decides
        sites = headers.get("sec-fetch-site")
        if sites is not None:
            bad = [s for s in sites if s.strip().lower() not in TRUSTED_FETCH_SITES]
            return ("Sec-Fetch-Site", f"the browser says {bad[0][:20]!r}") if bad else None
        for origin in headers.get("origin", []):
            if not same_origin(origin, host):
                return ("Origin", "the page that sent it is not served by this service")
        return None


def _is_page(path: str) -> bool:
    return path == "/" or path == "/static" or path.startswith("/static/")


DOCS_PAGES = ("/docs", "/docs/oauth2-redirect", "/redoc")
# the API docs share the playground's origin (and so its stored API key): never framed, never a referrer; their
# scripts come from a pinned CDN release (api/main.py), so their policy states framing only
DOCS_HEADERS = [
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def playground_csp(media_origins: list[str]) -> str:
    """The playground's policy: its own script and style only (no inline code); images and videos from the
    service, from the storage that serves outputs (an S3 endpoint on another origin), and data:/blob: previews."""
    media = " ".join(["'self'", *media_origins])
    return "; ".join(
        [
            "default-src 'self'",
            f"img-src {media} data: blob:",
            f"media-src {media} blob:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class SecurityHeaders:
    """``X-Content-Type-Options: nosniff`` on every response; the playground's pages also get the CSP (built by
    ``csp()`` when a page is served), ``X-Frame-Options`` and ``Referrer-Policy``."""

    def __init__(self, app: ASGIApp, csp: Callable[[], str]):
        self.app = app
        self.csp = csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = [(b"x-content-type-options", b"nosniff")]
        if scope["path"] in DOCS_PAGES:
            extra += DOCS_HEADERS
        elif _is_page(scope["path"]):
            extra += [
                (b"content-security-policy", self.csp().encode()),
                (b"x-frame-options", b"DENY"),
                (b"referrer-policy", b"no-referrer"),
            ]

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                message["headers"] = headers + [(k, v) for k, v in extra if k not in present]
            await send(message)

        await self.app(scope, receive, stamped)


def url_origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute URL; None for a relative one."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None
