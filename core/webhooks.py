"""Webhooks: a job's events POSTed to the URL its request named, signed by Standard Webhooks.

1. At submit the URL is checked (``check_target``): http(s) only; its host resolved, and every address must be
   public. Loopback and private ranges pass only with ``WEBHOOK_ALLOW_PRIVATE=1``; link-local and the cloud metadata
   addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254) never do. A refusal is a 422 naming ``webhook``.
2. A job transition that the request's ``webhook_events_filter`` names (``start``, ``progress``, ``output``,
   ``completed``) becomes a delivery in the job store (``store.webhooks``: Redis in distributed mode), so it
   survives a restart of any process.
3. The gateway's deliverer thread claims due deliveries under a lease (a gateway that dies mid-delivery leaves it
   to another after ``LEASE_S``), resolves the host once per delivery, checks the address again and pins it (a DNS
   answer that changes between the check and the request cannot redirect it), and POSTs
   ``{"type": "job.<event>", "timestamp": ..., "data": <the job envelope>}`` with the ``webhook-id``,
   ``webhook-timestamp`` and ``webhook-signature`` headers of Standard Webhooks (the ``standardwebhooks`` package).
4. A non-2xx answer, a timeout or a refused connection is retried with exponential backoff under the same
   ``webhook-id`` until ``WEBHOOK_RETRY_S`` has passed since the event; every attempt is recorded on the job
   (``webhooks``).

Each tenant signs with its own key, derived from ``WEBHOOK_SECRET`` (``GET /v1/webhooks/secret`` gives it): a tenant
that knows its key cannot forge deliveries to another tenant's receiver.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from core.errors import InputError

if TYPE_CHECKING:
    from core.jobs.store import JobStore
    from core.schemas import JobRecord

log = logging.getLogger("diffuserve.webhooks")

EVENTS = ("start", "progress", "output", "completed")
LEASE_S = 30.0  # a claimed delivery comes back to the queue after this long unless acknowledged
MAX_ATTEMPTS_SHOWN = 50  # attempts kept on the job record
ALWAYS_REFUSED = [
    ipaddress.ip_network("169.254.0.0/16"),  # link-local, cloud metadata (169.254.169.254)
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("::/128"),
]


# -- 1. the target --------------------------------------------------------------------------------------


def _refused(message: str) -> InputError:
    return InputError(message, field="webhook", code="webhook_refused")


def check_address(ip: str, allow_private: bool) -> None:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if any(addr in net for net in ALWAYS_REFUSED) or addr.is_multicast or addr.is_unspecified:
        raise _refused(f"webhook address {addr} is link-local, metadata or unroutable: never allowed")
    if addr.is_global:
        return
    if allow_private and (addr.is_loopback or addr.is_private):
        return
    raise _refused(f"webhook address {addr} is not public (WEBHOOK_ALLOW_PRIVATE=1 allows loopback and private)")


def resolve(url: str, allow_private: bool) -> tuple[str, int, str]:
    """(host, port, the one address a delivery will use): every address the host resolves to must pass."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refused("webhook must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise _refused("webhook URL must not carry credentials")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise _refused(f"webhook host {parts.hostname!r} does not resolve") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for ip in addresses:
        check_address(ip, allow_private)
    return parts.hostname, port, addresses[0]


def check_target(url: str, allow_private: bool) -> None:
    """At submit: 422 (``webhook_refused``) unless ``url`` is http(s) to addresses that are allowed."""
    resolve(url, allow_private)


# -- 2. events become deliveries ----------------------------------------------------------------------


def wanted(job: JobRecord, event: str) -> bool:
    url = job.input.get("webhook")
    return bool(url) and event in (job.input.get("webhook_events_filter") or ["completed"])


def emit(store: JobStore, job: JobRecord, event: str) -> None:
    """Queue a delivery of ``event`` for ``job`` when its request asked for it (never raises: an event the store
    cannot take is logged, the job goes on)."""
    if not wanted(job, event):
        return
    delivery = {
        "id": f"msg_{uuid.uuid4().hex}",
        "job_id": job.id,
        "tenant": job.tenant,
        "url": job.input["webhook"],
        "type": f"job.{event}",
        "data": job.public(),
        "base_url": job.base_url,
        "via": job.via,  # a job from a compatibility adapter is delivered in that API's shape
        "created": time.time(),
        "attempts": 0,
    }
    try:
        store.webhooks.add(delivery, time.time())
    except Exception:  # noqa: BLE001 - a lost event must not fail the job
        log.warning("could not queue the %s webhook of %s", event, job.id, exc_info=True)


# -- 3. signing and delivering --------------------------------------------------------------------------


def tenant_secret(master: str, tenant: str) -> str:
    """The tenant's own ``whsec_`` key, derived from the service's master secret."""
    raw = base64.b64decode(master.removeprefix("whsec_") + "==")
    derived = hmac.new(raw, f"diffuserve-webhooks:{tenant}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(derived).decode()


def new_secret() -> str:
    import secrets

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Deliverer:
    """The loop that delivers due webhooks (one per gateway; several gateways share the queue through the store)."""

    def __init__(
        self,
        store: JobStore,
        master_secret: str,
        url_for: Callable[[str, str], str],
        allow_private: bool = False,
        retry_s: float = 3600.0,
        backoff_s: float = 1.0,
        timeout_s: float = 10.0,
        interval_s: float = 0.2,
        shapes: dict[str, Callable[[dict, dict], dict]] | None = None,
    ):
        self.store = store
        # adapter name (JobRecord.via["api"]) -> (job with output URLs, delivery) -> the body sent
        self.shapes = shapes or {}
        self.master_secret = master_secret
        self.url_for = url_for  # (storage key, base URL) -> a URL the receiver can GET
        self.allow_private = allow_private
        self.retry_s = retry_s
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.interval_s = interval_s

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self._loop, args=(stop,), name="webhooks", daemon=True)
        t.start()
        return t

    def _loop(self, stop: threading.Event) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s, follow_redirects=False, trust_env=False) as http:
            while not stop.is_set():
                try:
                    due = self.store.webhooks.claim_due(time.time(), LEASE_S, 16)
                except Exception:  # noqa: BLE001 - the store is away: try again
                    due = []
                for delivery in due:
                    self.deliver(http, delivery)
                if not due:
                    stop.wait(self.interval_s)

    def body(self, delivery: dict) -> str:
        data = dict(delivery["data"])
        data["output"] = [dict(item) for item in data.get("output", [])]
        for item in data["output"]:  # output keys become URLs the receiver can GET, as in a GET of the job
            key = item.pop("key", None)
            if key:
                item["url"] = self.url_for(key, delivery.get("base_url") or "")
        shape = self.shapes.get((delivery.get("via") or {}).get("api"))
        if shape is not None:
            return json.dumps(shape(data, delivery), separators=(",", ":"))
        sent = datetime.fromtimestamp(delivery["created"], UTC).isoformat().replace("+00:00", "Z")
        return json.dumps({"type": delivery["type"], "timestamp": sent, "data": data}, separators=(",", ":"))

    def deliver(self, http, delivery: dict) -> None:
        from standardwebhooks import Webhook

        attempt = delivery["attempts"] + 1
        status, error, refused = None, None, False
        try:
            # 1. the address, resolved once per delivery and checked again, then pinned for every attempt
            if "address" not in delivery:
                host, port, address = resolve(delivery["url"], self.allow_private)
                delivery.update(address=address, host=host, port=port)
            check_address(delivery["address"], self.allow_private)
            parts = urlsplit(delivery["url"])
            ip = delivery["address"]
            netloc = f"[{ip}]:{delivery['port']}" if ":" in ip else f"{ip}:{delivery['port']}"
            pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
            # 2. signed as Standard Webhooks: the same webhook-id and the same body on every attempt (built once)
            if "body" not in delivery:
                delivery["body"] = self.body(delivery)
            body = delivery["body"]
            now = datetime.now(UTC)
            signature = Webhook(tenant_secret(self.master_secret, delivery["tenant"])).sign(delivery["id"], now, body)
            host_header = parts.netloc.rpartition("@")[2]
            headers = {
                "content-type": "application/json",
                "host": host_header,
                "user-agent": "diffuserve-webhooks",
                "webhook-id": delivery["id"],
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signature,
            }
            extensions = {"sni_hostname": delivery["host"]} if parts.scheme == "https" else {}
            r = http.post(pinned, content=body.encode(), headers=headers, extensions=extensions)
            status = r.status_code
        except InputError as e:  # the address is not allowed (any more): not retried
            error, refused = e.message, True
        except Exception as e:  # noqa: BLE001 - a timeout or a refused connection: retried
            error = type(e).__name__
        ok = status is not None and 200 <= status < 300
        # 3. done, retried later, or given up; the attempt is recorded on the job either way
        delivery["attempts"] = attempt
        next_at = None
        if not ok:
            delay = min(self.backoff_s * 2 ** (attempt - 1), 600.0)
            if time.time() + delay - delivery["created"] <= self.retry_s and not refused:
                next_at = time.time() + delay
        try:
            if ok or next_at is None:
                self.store.webhooks.done(delivery["id"])
            else:
                self.store.webhooks.reschedule(delivery, next_at)
        except Exception:  # noqa: BLE001 - the lease brings it back
            log.warning("could not update webhook delivery %s", delivery["id"])
        self._record(delivery, attempt, status, error, next_at)

    def _record(self, delivery: dict, attempt: int, status: int | None, error: str | None, next_at: float | None):
        entry = {
            "webhook_id": delivery["id"],
            "type": delivery["type"],
            "attempt": attempt,
            "status_code": status,
            "error": error,
            "at": datetime.now(UTC).isoformat(),
            "next_attempt_at": datetime.fromtimestamp(next_at, UTC).isoformat() if next_at else None,
        }

        def fn(job):
            job.webhooks = (job.webhooks + [entry])[-MAX_ATTEMPTS_SHOWN:]
            return job

        try:
            self.store.jobs.update(delivery["job_id"], fn)
        except Exception:  # noqa: BLE001 - the attempt is logged even when the record cannot take it
            log.warning("could not record webhook attempt of %s", delivery["job_id"])
        log.info("webhook %s %s attempt %d: %s", delivery["id"], delivery["type"], attempt, status or error)
