"""Webhooks: a job's events POSTed to the URL its request named, signed by Standard Webhooks.

1. At submit the URL is checked (``check_target``): http(s) only; its host resolved, and every address must be
   public. Loopback and private ranges pass only with ``WEBHOOK_ALLOW_PRIVATE=1``; link-local and the cloud metadata
   addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254) never do. A refusal is a 422 naming ``webhook``.
2. A job transition that the request's ``webhook_events_filter`` names (``start``, ``progress``, ``output``,
   ``completed``) becomes a delivery in the job store (``store.webhooks``: Redis in distributed mode), so it
   survives a restart of any process.
3. The gateway's deliverer (one asyncio loop) claims due deliveries under a lease (a gateway that dies mid-delivery
   leaves it to another after ``LEASE_S``; an attempt in flight keeps renewing it), resolves the host once per
   delivery, checks the address again and pins it (a DNS answer that changes between the check and the request
   cannot redirect it), and POSTs ``{"type": "job.<event>", "timestamp": ..., "data": <the job envelope>}`` with the
   ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers of Standard Webhooks (the
   ``standardwebhooks`` package). Each attempt has a wall-clock deadline, reads the status and never the body, and
   takes a slot of a small pool shared fairly: a tenant holds at most ``per_tenant`` slots, a receiving host (host
   and port) at most ``per_host``, more than one tenant's share, so no tenant fills a receiver that others use. The
   DNS lookups have their own pool, shared the same way (``Deliverer._lookup``): a lookup that hangs past its
   attempt's deadline keeps its thread, and a tenant holding its share of them waits (``dns_busy``, retried).
4. A non-2xx answer, a timeout or a refused connection is retried with exponential backoff under the same
   ``webhook-id`` until ``WEBHOOK_RETRY_S`` has passed since the event; every attempt is recorded on the job
   (``webhooks``).

Each tenant signs with its own key, derived from ``WEBHOOK_SECRET`` (``GET /v1/webhooks/secret`` gives it): a tenant
that knows its key cannot forge deliveries to another tenant's receiver.
"""

from __future__ import annotations

import asyncio
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
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import InputError

if TYPE_CHECKING:
    from core.jobs.store import JobStore, WebhookQueue
    from core.schemas import JobRecord

log = logging.getLogger("diffuserve.webhooks")

EVENTS = ("start", "progress", "output", "completed")
LEASE_S = 30.0  # a claimed delivery comes back to the queue after this long unless acknowledged
MAX_ATTEMPTS_SHOWN = 50  # attempts kept on the job record
CLAIM_BATCH = 32  # deliveries claimed per look at the queue
HELD_PER_SLOT = 4  # deliveries a gateway holds claimed per slot of the pool (and of a tenant's share)
ALWAYS_REFUSED = [
    ipaddress.ip_network("169.254.0.0/16"),  # link-local, cloud metadata (169.254.169.254)
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("::/128"),
]
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the well-known prefix, IPv4 in the last 32 bits
# IPv6 forms that carry an IPv4 address some relay or stack would reach: refused outright (deprecated or relayed,
# never a real receiver's address); NAT64's well-known prefix and IPv4-mapped are unwrapped to the IPv4 rule instead
TRANSITION_REFUSED = [
    ipaddress.ip_network("2002::/16"),  # 6to4
    ipaddress.ip_network("2001::/32"),  # Teredo
    ipaddress.ip_network("::/96"),  # IPv4-compatible (::a.b.c.d), deprecated
    ipaddress.ip_network("::ffff:0:0:0/96"),  # IPv4-translated (::ffff:0:a.b.c.d), RFC 2765
    ipaddress.ip_network("64:ff9b:1::/48"),  # NAT64 local-use prefix (IPv4 split around the u octet)
]


# -- 1. the target --------------------------------------------------------------------------------------


def _refused(message: str) -> InputError:
    return InputError(message, field="webhook", code="webhook_refused")


def _ipv4_inside(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) address reaches."""
    if addr.ipv4_mapped:
        return addr.ipv4_mapped
    if addr in NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def check_address(ip: str, allow_private: bool) -> None:
    """Refuse an address a webhook must never reach: link-local and metadata, unroutable, multicast; loopback and
    private ones unless ``allow_private``; IPv6 transition forms are judged by the IPv4 address they carry (NAT64,
    IPv4-mapped) or refused (6to4, Teredo, IPv4-compatible, IPv4-translated)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if int(addr) > 1 and any(addr in net for net in TRANSITION_REFUSED):  # :: and ::1 are judged below
            raise _refused(
                f"webhook address {addr} is an IPv6 transition form (6to4, Teredo, IPv4 inside): never allowed"
            )
        addr = _ipv4_inside(addr) or addr
    if any(addr in net for net in ALWAYS_REFUSED) or addr.is_multicast or addr.is_unspecified:
        raise _refused(f"webhook address {addr} is link-local, metadata or unroutable: never allowed")
    if addr.is_global:
        return
    if allow_private and (addr.is_loopback or addr.is_private):
        return
    raise _refused(f"webhook address {addr} is not public (WEBHOOK_ALLOW_PRIVATE=1 allows loopback and private)")


def resolve(url: str, allow_private: bool) -> tuple[str, int, str]:
    """(host, port, the one address a delivery will use): every address the host resolves to must pass."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port that is not a number from 0 to 65535, brackets that do not close
        raise _refused("webhook is not a URL whose host and port can be read") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refused("webhook must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise _refused("webhook URL must not carry credentials")
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


class Delivery(BaseModel):
    """One event on its way to a receiver. The store's ``WebhookQueue`` keeps it as a JSON dict (:meth:`wire`): the
    deliverer parses what it claims and writes back what it adds, so the attempt count and the pinned address live in
    the store between attempts, and any gateway (of any version) can pick it up."""

    model_config = ConfigDict(extra="allow")  # fields another version wrote survive a round trip

    id: str  # msg_<uuid>: the webhook-id, the same on every attempt
    job_id: str
    tenant: str = ""
    url: str
    type: str  # job.<event>
    data: dict[str, Any]  # the job envelope when the event happened (output items with storage keys)
    base_url: str | None = None  # the gateway URL the job was submitted to (local output URLs)
    via: dict[str, Any] | None = None  # a job from a compatibility adapter is delivered in that API's shape
    created: float  # when the event happened (epoch seconds): the order of a job's events, the retry window
    attempts: int = 0
    pushed: int = 0  # times sent back to the queue because its tenant held its share of the waiting line
    # set at the first attempt and kept for every later one: the address checked and pinned, the body signed
    address: str | None = None
    host: str | None = None
    port: int | None = None
    body: str | None = None

    def wire(self) -> dict[str, Any]:
        """The dict the store keeps: only the fields that were set, as before this model (a delivery without a pinned
        address has no ``address`` key), so every gateway reads what another wrote."""
        return self.model_dump(mode="json", exclude_unset=True)


def wanted(job: JobRecord, event: str) -> bool:
    options = job.options
    return bool(options.webhook) and event in options.webhook_events_filter


def emit(deliveries: WebhookQueue, job: JobRecord, event: str) -> None:
    """Queue a delivery of ``event`` for ``job`` when its request asked for it (never raises: an event the store
    cannot take is logged, the job goes on)."""
    if not wanted(job, event):
        return
    try:
        delivery = Delivery(
            id=f"msg_{uuid.uuid4().hex}",
            job_id=job.id,
            tenant=job.tenant,
            url=job.options.webhook,
            type=f"job.{event}",
            data=job.public(),
            base_url=job.base_url,
            via=job.via,
            created=time.time(),
            attempts=0,
        )
        deliveries.add(delivery.wire(), time.time())
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


class DnsBusy(Exception):
    """No DNS thread for this lookup: the tenant's share (or the whole pool) is held by lookups that hang."""


class Deliverer:
    """Delivers due webhooks: one asyncio loop per gateway (several gateways share the queue through the store).

    Every outbound attempt is bounded: a wall-clock deadline (``timeout_s``, connect to status line included, so a
    receiver that drips a byte every few seconds is cut off), the response body never read (only the status), at most
    ``concurrency`` attempts in flight per gateway, ``per_tenant`` per tenant and ``per_host`` per receiver. A slow or
    hostile receiver costs its own tenant's slots, never another tenant's. A delivery that must wait for its
    tenant's or host's slot goes back to the queue (due again when a slot is expected free), and the lease of an
    attempt in flight is renewed, so no other gateway claims it meanwhile."""

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
        concurrency: int = 8,
        per_tenant: int = 2,
        per_host: int = 4,
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
        self.concurrency = concurrency
        self.per_tenant = per_tenant
        self.per_host = max(per_host, per_tenant)
        self.in_flight: dict[str, tuple[Delivery, float]] = {}  # delivery id -> (delivery, when its lease was renewed)
        self.waiting: list[tuple[Delivery, float]] = []  # claimed, waiting for a slot: (delivery, lease renewed at)
        # DNS lookups: a pool of their own, and the lookups each tenant has on it (running or abandoned; _lookup)
        self.dns_threads = concurrency
        self._resolving: Counter[str] = Counter()
        self._resolving_lock = threading.Lock()  # taken on the loop and in the pool's threads (a lookup's end)

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=lambda: asyncio.run(self.run(stop)), name="webhooks", daemon=True)
        t.start()
        return t

    async def run(self, stop: threading.Event) -> None:
        """Claim, start what the shares allow, keep leases alive; the store's calls run on threads, so a slow store
        never holds an attempt in flight past its deadline."""
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=0)
        self._dns = ThreadPoolExecutor(self.dns_threads, thread_name_prefix="webhook-dns")  # see _lookup
        async with httpx.AsyncClient(
            timeout=self.timeout_s, follow_redirects=False, trust_env=False, limits=limits
        ) as http:
            self._http, self._tasks = http, set()
            while not stop.is_set():
                claimed = 0
                try:
                    await self._renew_leases()
                    claimed = await self._claim()
                    self._start_ready()
                except Exception:  # noqa: BLE001 - a pass that failed (the store away): the next one tries again
                    log.warning("webhook delivery pass failed", exc_info=True)
                await asyncio.sleep(0 if claimed >= CLAIM_BATCH else self.interval_s)  # a full claim: more are due
            for task in self._tasks:
                task.cancel()  # their leases bring them back to another gateway (or this one, restarted)
        self._dns.shutdown(wait=False, cancel_futures=True)

    async def _claim(self) -> int:
        """Claim due deliveries into the local waiting line (leased, renewed while they wait). A tenant holds at most
        ``HELD_PER_SLOT`` times its share here; past that its deliveries go back to the queue, due again after a
        delay that doubles each time (a fast receiver drains its line at once, a slow one costs few store writes)."""
        room = HELD_PER_SLOT * self.concurrency - len(self.in_flight) - len(self.waiting)
        if room <= 0:
            return 0
        due = await asyncio.to_thread(self.store.webhooks.claim_due, time.time(), LEASE_S, min(room, CLAIM_BATCH))
        held = Counter(self._slots(d)[0] for d, _ in self.waiting)
        for raw in due:
            try:
                delivery = Delivery.model_validate(raw)
            except ValidationError:  # it could never be sent: dropped, or it would come back after every lease
                log.warning("dropped a malformed webhook delivery %s", raw.get("id"), exc_info=True)
                if raw.get("id"):
                    await asyncio.to_thread(self.store.webhooks.done, raw["id"])
                continue
            tenant = self._slots(delivery)[0]
            if held[tenant] >= HELD_PER_SLOT * self.per_tenant:
                pushed = delivery.pushed
                delivery.pushed = pushed + 1
                later = time.time() + min(self.timeout_s, self.interval_s * 2**pushed)
                await asyncio.to_thread(self._reschedule, delivery, later)
                continue
            held[tenant] += 1
            self.waiting.append((delivery, time.monotonic()))
        return len(due)

    def _start_ready(self) -> None:
        """Start waiting deliveries, oldest event first, while the pool, their tenant's share, their receiver's share
        and their job (its events go one at a time, in order) allow."""
        self.waiting.sort(key=lambda item: (item[0].created, item[0].id))
        kept = []
        for delivery, renewed in self.waiting:
            tenant, host = self._slots(delivery)
            flying = [d for d, _ in self.in_flight.values()]
            if (
                len(flying) >= self.concurrency
                or sum(self._slots(d)[0] == tenant for d in flying) >= self.per_tenant
                or sum(self._slots(d)[1] == host for d in flying) >= self.per_host
                or any(d.job_id == delivery.job_id for d in flying)
                or any(d.job_id == delivery.job_id for d, _ in kept)  # an older event of its job waits
            ):
                kept.append((delivery, renewed))
                continue
            self.in_flight[delivery.id] = (delivery, renewed)
            task = asyncio.get_running_loop().create_task(self._attempt(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.waiting = kept

    @staticmethod
    def _slots(delivery: Delivery) -> tuple[str, str]:
        """Whose share an attempt takes: its tenant's, and its receiver's (host and port)."""
        parts = urlsplit(delivery.url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = 0
        return delivery.tenant, f"{(parts.hostname or '').lower()}:{port}"

    async def _renew_leases(self) -> None:
        """Deliveries held here (in flight or waiting) keep their claim: re-leased every third of LEASE_S. The times
        are set before any await, so an attempt ending meanwhile never sees a half-updated line."""
        now, due = time.monotonic(), []
        for delivery_id, (delivery, renewed) in list(self.in_flight.items()):
            if now - renewed >= LEASE_S / 3:
                self.in_flight[delivery_id] = (delivery, now)
                due.append(delivery)
        waiting = []
        for delivery, renewed in self.waiting:
            if now - renewed >= LEASE_S / 3:
                due.append(delivery)
                renewed = now
            waiting.append((delivery, renewed))
        self.waiting = waiting
        for delivery in due:
            await asyncio.to_thread(self._reschedule, delivery, time.time() + LEASE_S)

    def _reschedule(self, delivery: Delivery, due: float) -> None:
        try:
            self.store.webhooks.reschedule(delivery.wire(), due)
        except Exception:  # noqa: BLE001 - its lease brings it back anyway
            log.warning("could not reschedule webhook delivery %s", delivery.id)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            status, error, refused = await self._post(self._http, delivery)
        finally:
            self.in_flight.pop(delivery.id, None)
        await asyncio.to_thread(self._settle, delivery, status, error, refused)
        self._start_ready()  # a slot is free: the next in line goes now, not at the next pass

    def body(self, delivery: Delivery) -> str:
        data = dict(delivery.data)
        data["output"] = [dict(item) for item in data.get("output", [])]
        for item in data["output"]:  # output keys become URLs the receiver can GET, as in a GET of the job
            key = item.pop("key", None)
            if key:
                item["url"] = self.url_for(key, delivery.base_url or "")
        shape = self.shapes.get((delivery.via or {}).get("api"))
        if shape is not None:  # an adapter's shape reads the delivery as the store keeps it
            return json.dumps(shape(data, delivery.wire()), separators=(",", ":"))
        sent = datetime.fromtimestamp(delivery.created, UTC).isoformat().replace("+00:00", "Z")
        return json.dumps({"type": delivery.type, "timestamp": sent, "data": data}, separators=(",", ":"))

    async def _lookup(self, delivery: Delivery) -> tuple[str, int, str]:
        """``resolve`` on the DNS pool, bounded. A lookup the attempt's deadline abandons keeps its thread blocked in
        getaddrinfo (a thread cannot be interrupted) until the resolver gives up, so hung lookups could fill the pool
        and every later one would queue behind them. Two counts prevent that, each lookup counted from its start to
        the end of its thread's call, abandoned or not:
        - a tenant holds at most ``per_tenant`` lookups: its attempts in flight hold at most that many slots, so a
          tenant at the count has an abandoned lookup, and its attempt fails ``dns_busy`` (retried with backoff)
          instead of taking another thread;
        - a lookup starts only while the pool has a free thread (fewer lookups than threads): none ever queues, and
          when abandoned lookups of several tenants take every thread, the others fail ``dns_busy`` at once
          rather than wait out their deadline behind them."""
        tenant = delivery.tenant
        with self._resolving_lock:
            if self._resolving[tenant] >= self.per_tenant:
                raise DnsBusy("dns_busy: this tenant's earlier DNS lookups still hang")
            if self._resolving.total() >= self.dns_threads:
                raise DnsBusy("dns_busy: every DNS thread is held by a lookup that hangs")
            self._resolving[tenant] += 1
        try:
            future = self._dns.submit(resolve, delivery.url, self.allow_private)
        except BaseException:
            self._resolved(tenant)
            raise
        future.add_done_callback(lambda _: self._resolved(tenant))  # when the thread returns, even if abandoned
        return await asyncio.wrap_future(future)

    def _resolved(self, tenant: str) -> None:
        with self._resolving_lock:
            self._resolving[tenant] -= 1
            if self._resolving[tenant] <= 0:
                del self._resolving[tenant]

    async def _post(self, http, delivery: Delivery) -> tuple[int | None, str | None, bool]:
        """One attempt: (status code, error, refused). Its whole run, the DNS lookup included, is under
        ``timeout_s``; only the status line and headers are read, never the body."""
        from standardwebhooks import Webhook

        try:
            async with asyncio.timeout(self.timeout_s):
                # 1. the address, resolved once per delivery and checked again, then pinned for every attempt
                if delivery.address is None:
                    delivery.host, delivery.port, delivery.address = await self._lookup(delivery)
                check_address(delivery.address, self.allow_private)
                parts = urlsplit(delivery.url)
                ip = delivery.address
                netloc = f"[{ip}]:{delivery.port}" if ":" in ip else f"{ip}:{delivery.port}"
                pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
                # 2. signed as Standard Webhooks: the same webhook-id and body on every attempt (built once)
                if delivery.body is None:
                    delivery.body = self.body(delivery)
                body = delivery.body
                now = datetime.now(UTC)
                signer = Webhook(tenant_secret(self.master_secret, delivery.tenant))
                headers = {
                    "content-type": "application/json",
                    "host": parts.netloc.rpartition("@")[2],
                    "user-agent": "diffuserve-webhooks",
                    "webhook-id": delivery.id,
                    "webhook-timestamp": str(int(now.timestamp())),
                    "webhook-signature": signer.sign(delivery.id, now, body),
                }
                extensions = {"sni_hostname": delivery.host} if parts.scheme == "https" else {}
                request = http.build_request(
                    "POST", pinned, content=body.encode(), headers=headers, extensions=extensions
                )
                # 3. the status line and headers only: the body (however large or slow) is never read
                response = await http.send(request, stream=True)
                await response.aclose()
                return response.status_code, None, False
        except InputError as e:  # the address is not allowed (any more): not retried
            return None, e.message, True
        except DnsBusy as e:  # this tenant's (or every) DNS thread is held by a hung lookup: retried later
            return None, str(e), False
        except TimeoutError:
            return None, f"no answer within {self.timeout_s:g} s", False
        except Exception as e:  # noqa: BLE001 - a refused connection or a protocol error: retried
            return None, type(e).__name__, False

    def _settle(self, delivery: Delivery, status: int | None, error: str | None, refused: bool) -> None:
        """Done, retried later with backoff, or given up; the attempt is recorded on the job either way."""
        attempt = delivery.attempts + 1
        ok = status is not None and 200 <= status < 300
        delivery.attempts = attempt
        next_at = None
        if not ok:
            delay = min(self.backoff_s * 2 ** (attempt - 1), 600.0)
            if time.time() + delay - delivery.created <= self.retry_s and not refused:
                next_at = time.time() + delay
        try:
            if ok or next_at is None:
                self.store.webhooks.done(delivery.id)
            else:
                self.store.webhooks.reschedule(delivery.wire(), next_at)
        except Exception:  # noqa: BLE001 - the lease brings it back
            log.warning("could not update webhook delivery %s", delivery.id)
        self._record(delivery, attempt, status, error, next_at)

    def _record(self, delivery: Delivery, attempt: int, status: int | None, error: str | None, next_at: float | None):
        entry = {
            "webhook_id": delivery.id,
            "type": delivery.type,
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
            self.store.jobs.update(delivery.job_id, fn)
        except Exception:  # noqa: BLE001 - the attempt is logged even when the record cannot take it
            log.warning("could not record webhook attempt of %s", delivery.job_id)
        log.info("webhook %s %s attempt %d: %s", delivery.id, delivery.type, attempt, status or error)
