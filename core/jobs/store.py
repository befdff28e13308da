"""The job store as small protocols: job records, event logs, leases, limits, retention, registrations.

Each has a memory adapter (here; embedded mode) and a Redis one (:mod:`core.jobs.redis_store`; distributed mode).
Everything above them (:mod:`core.jobs.lifecycle`) is written once against the protocols; idempotency and quotas
are decided there, the adapters only make each step atomic.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

from core.errors import QuotaExceeded
from core.jobs.backlog import Backlog, MemoryBacklog
from core.jobs.usage import MemoryUsage, Usage
from core.schemas import JobRecord, JobStatus

Mutator = Callable[[JobRecord], JobRecord | None]
INDEXED = (JobStatus.queued, JobStatus.running)


class JobRecords(Protocol):
    """Job records with the queued/running and per-tenant active indexes. Raises :class:`Unavailable` when the
    backend cannot be reached (every protocol here does)."""

    def create(
        self,
        job: JobRecord,
        idempotency: tuple[str, str] | None = None,
        max_active: int | None = None,
        event: tuple[str, dict] | None = None,
    ) -> tuple[JobRecord, bool, str | None]:
        """Store a new job, atomically. With ``idempotency=(key, body_hash)`` and a key already used, return the first
        job, False and the body hash stored with it (the lifecycle decides what a repeat means). With ``max_active``,
        a tenant that already has that many queued or running jobs gets :class:`QuotaExceeded`. ``event`` (name,
        data) is the new job's first event, appended with it."""

    def release_idempotency(self, tenant: str, key: str, job_id: str) -> None:
        """Forget ``key`` if it still names ``job_id`` (a submit that could not be enqueued)."""

    def get(self, job_id: str) -> JobRecord | None: ...

    def update(
        self,
        job_id: str,
        fn: Mutator,
        lease: tuple[str, float] | None = None,
        event: Callable[[JobRecord], tuple[str, dict]] | None = None,
    ) -> JobRecord | None:
        """Atomically apply ``fn`` to the job; ``fn`` returns the new record, or None to leave it as it is. ``fn``
        may be called more than once (another writer in between): it must decide afresh on each call.

        Returns the record after the call (None if the job does not exist). Keeps the indexes; a job turning terminal
        is scheduled for deletion after the job TTL. With ``lease=(token, ttl)`` the job's lease is written in the
        same atomic step (``ttl`` 0: dropped) when ``fn`` changed the job, and so is ``event(new)`` (name, data)
        appended to its event log."""

    def list(self, tenant: str, limit: int, offset: int) -> list[JobRecord]: ...

    def active_count(self, tenant: str) -> int: ...

    def ids_with_status(self, status: JobStatus, limit: int | None = None) -> list[str]:
        """Ids of the jobs with ``status`` (queued or running); at most ``limit`` of them (any, not the oldest)."""

    def delete_job(self, job_id: str) -> None:
        """Remove the record, its events and its index entries."""


class EventLog(Protocol):
    def add_event(self, job_id: str, event: str, data: dict) -> int:
        """Append to the job's event log (replayed to late SSE subscribers); returns its sequence number."""

    def events(self, job_id: str, start: int = 0) -> list[dict]: ...

    def event_count(self, job_id: str) -> int: ...

    def wait_events(self, job_id: str, count: int, timeout: float) -> bool:
        """Block until the job has more than ``count`` events, or ``timeout`` seconds pass."""

    def listen(self, callback: Callable[[str | None, str | None], None], stop: threading.Event) -> threading.Thread:
        """Call ``callback(job_id, event)`` whenever a job gets an event (``(None, None)``: maybe missed some,
        re-check all), until ``stop`` is set. One listener serves every waiter of a gateway."""


class Leases(Protocol):
    def renew_lease(self, job_id: str, token: str, ttl: float) -> bool:
        """Extend the lease only while the job is running under ``token``; False when the caller lost it."""

    def lease_alive(self, job_id: str) -> bool: ...


class Limits(Protocol):
    def rate_limit(self, key: str, limit: int, window_s: int) -> float | None:
        """Count one hit; return seconds to wait when over ``limit`` per window, else None."""

    def try_lock(self, name: str, ttl: float) -> bool: ...

    def incr(self, name: str, labels: dict[str, str], value: float = 1.0) -> None: ...

    def observe(self, name: str, labels: dict[str, str], value: float, buckets: tuple[float, ...]) -> None: ...

    def metrics_snapshot(self) -> tuple[dict, dict]:
        """(counters {(name, labels_tuple): value}, histograms {(name, labels_tuple): {"buckets", "sum", "count"}})."""


class Retention(Protocol):
    """Things to delete at a time: ``job:{id}``, ``upload:{tenant}/{id}``."""

    def schedule_expiry(self, member: str, at: float) -> None: ...

    def extend_expiry(self, member: str, at: float) -> None:
        """Make ``member`` due no earlier than ``at`` (a later time already set stays)."""

    def due_expiries(self, now: float, limit: int = 100) -> list[str]: ...

    def forget_expiry(self, member: str) -> None: ...


class Registrations(Protocol):
    """What tenants trained: models and LoRAs registered under a name, files in storage. Records are JSON dicts
    (a model's or LoRA's is ``core.schemas.Registration.model_dump(mode="json")``, read back typed through
    ``core.tenant_models.registration``; an adapter may keep a record of its own kind here)."""

    def register(self, tenant: str, kind: str, name: str, record: dict) -> None: ...

    def registration(self, tenant: str, kind: str, name: str) -> dict | None: ...

    def registrations(self, tenant: str, kind: str) -> list[dict]: ...

    def unregister(self, tenant: str, kind: str, name: str) -> None:
        """Remove ``name``; no error when it is not there."""


class WebhookQueue(Protocol):
    """Webhook deliveries waiting to be sent (``core/webhooks.py``): a delivery claimed and not acknowledged within
    its lease is due again, so one that a dying gateway held is not lost. A delivery is a JSON dict with an ``id``
    (``core.webhooks.Delivery.wire()``; the deliverer parses what it claims)."""

    def add(self, delivery: dict, due: float) -> None: ...

    def claim_due(self, now: float, lease_s: float, limit: int) -> list[dict]:
        """Up to ``limit`` deliveries due at ``now``, each made due again at ``now + lease_s`` (claimed)."""

    def reschedule(self, delivery: dict, due: float) -> None:
        """Keep ``delivery`` (its attempt count, pinned address) and make it due at ``due``."""

    def done(self, delivery_id: str) -> None: ...


class Backend(Protocol):
    def batch(self, metrics_after: bool = False) -> AbstractContextManager[None]:
        """Writes whose answers nobody reads (counters, histograms, usage, events, webhook deliveries, backlog takes,
        retention) made on this thread inside the block may go out together at its end, raising
        :class:`Unavailable` there. ``metrics_after``: the block's counters and histograms are written after its
        other writes went out (the events that wake clients do not wait on them)."""

    job_ttl_s: float
    remote: bool  # each call is a network round trip (Redis); False: the process's own memory

    def ping(self) -> bool: ...

    def close(self) -> None: ...


@dataclass
class JobStore:
    """The job store: seven small protocols over one backend (one lock in memory, one connection pool in Redis), so a
    job, its lease and its indexes still change together. Built by :func:`memory_store` or
    :func:`core.jobs.redis_store.redis_store`."""

    jobs: JobRecords
    events: EventLog
    leases: Leases
    limits: Limits
    retention: Retention
    registrations: Registrations
    webhooks: WebhookQueue
    backlog: Backlog
    usage: Usage
    backend: Backend

    @property
    def job_ttl_s(self) -> float:
        return self.backend.job_ttl_s

    def ping(self) -> bool:
        return self.backend.ping()

    def batch(self, metrics_after: bool = False) -> AbstractContextManager[None]:
        """See :meth:`Backend.batch`: one round trip for a transition's bookkeeping in distributed mode."""
        return self.backend.batch(metrics_after)

    def close(self) -> None:
        self.backend.close()


def over_quota(tenant: str, max_active: int) -> QuotaExceeded:
    return QuotaExceeded(f"tenant {tenant!r} already has {max_active} queued or running jobs", retry_after=5)


def _clone(job: JobRecord) -> JobRecord:
    """A private copy of a record (what Redis gives by parsing its JSON): 4x cheaper than a pydantic deep copy."""
    return JobRecord.model_validate_json(job.model_dump_json())


def _labels_key(labels: dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


class MemoryState:
    """What the memory adapters share: the dicts, under one lock (so a job, its lease and its indexes change together),
    and a condition variable for waiters."""

    remote = False

    def __init__(self, job_ttl_s: float) -> None:
        self.job_ttl_s = job_ttl_s
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, JobRecord] = {}
        self._events: dict[str, list[dict]] = defaultdict(list)
        self._idem: dict[tuple[str, str], tuple[str, str]] = {}
        self._by_tenant: dict[str, list[str]] = defaultdict(list)
        self._active: dict[str, set[str]] = defaultdict(set)
        self._index: dict[JobStatus, dict[str, None]] = {s: {} for s in INDEXED}
        self._leases: dict[str, float] = {}
        self._expiry: dict[str, float] = {}
        self._listeners: list[Callable[[str | None, str | None], None]] = []
        self._counters: dict[tuple, float] = defaultdict(float)
        self._hist: dict[tuple, dict] = {}
        self._rate: dict[tuple[str, int], int] = defaultdict(int)
        self._locks: dict[str, float] = {}
        self._registry: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
        self._deliveries: dict[str, tuple[str, float]] = {}  # webhook deliveries: id -> (JSON, due)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def batch(self, metrics_after: bool = False) -> AbstractContextManager[None]:
        return nullcontext()  # in memory every write is already done at once

    def add_event(self, job_id: str, event: str, data: dict) -> int:
        with self._lock:
            log = self._events[job_id]
            log.append({"seq": len(log), "event": event, "data": data})
            self._changed.notify_all()
            seq = len(log) - 1
            listeners = list(self._listeners)
        for cb in listeners:  # outside the lock
            cb(job_id, event)
        return seq


class MemoryJobs:
    """Job records, the queued/running and per-tenant indexes, idempotency keys."""

    def __init__(self, state: MemoryState):
        self.s = state

    def create(self, job, idempotency=None, max_active=None, event=None):
        job, created, stored_hash = self._create(job, idempotency, max_active)
        if created and event is not None:
            self.s.add_event(job.id, *event)
        return job, created, stored_hash

    def _create(self, job, idempotency, max_active):
        with self.s._lock:
            if idempotency:
                k = (job.tenant, idempotency[0])
                first = self.s._idem.get(k)
                if first and first[0] in self.s._jobs:
                    return _clone(self.s._jobs[first[0]]), False, first[1]
            if max_active is not None and len(self.s._active[job.tenant]) >= max_active:
                raise over_quota(job.tenant, max_active)
            if idempotency:
                self.s._idem[(job.tenant, idempotency[0])] = (job.id, idempotency[1])
            self.s._jobs[job.id] = _clone(job)
            self.s._by_tenant[job.tenant].append(job.id)
            self._reindex(job.id, None, job)
            self.s._changed.notify_all()
            return job, True, None

    def release_idempotency(self, tenant, key, job_id):
        with self.s._lock:
            if self.s._idem.get((tenant, key), ("",))[0] == job_id:
                del self.s._idem[(tenant, key)]

    def _reindex(self, job_id: str, old: JobRecord | None, new: JobRecord) -> None:
        if old is not None and old.status == new.status:
            return
        for s in INDEXED:
            self.s._index[s].pop(job_id, None)
        if new.status in INDEXED:
            self.s._index[new.status][job_id] = None
            self.s._active[new.tenant].add(job_id)
        else:
            self.s._active[new.tenant].discard(job_id)
            self.s._expiry[f"job:{job_id}"] = time.time() + self.s.job_ttl_s

    def get(self, job_id):
        with self.s._lock:
            job = self.s._jobs.get(job_id)
            return _clone(job) if job else None

    def update(self, job_id, fn, lease=None, event=None):
        new, changed = self._update(job_id, fn, lease)
        if changed and event is not None:
            self.s.add_event(job_id, *event(new))
        return new

    def _update(self, job_id, fn, lease):
        with self.s._lock:
            job = self.s._jobs.get(job_id)
            if job is None:
                return None, False
            new = fn(_clone(job))
            if new is None:
                return _clone(job), False
            self._reindex(job_id, job, new)
            self.s._jobs[job_id] = _clone(new)
            if lease is not None:
                if lease[1] > 0:
                    self.s._leases[job_id] = time.monotonic() + lease[1]
                else:
                    self.s._leases.pop(job_id, None)
            self.s._changed.notify_all()
            return new, True

    def list(self, tenant, limit, offset):
        with self.s._lock:
            ids = self.s._by_tenant.get(tenant, [])[::-1][offset : offset + limit]
            return [_clone(self.s._jobs[i]) for i in ids]

    def active_count(self, tenant):
        with self.s._lock:
            return len(self.s._active.get(tenant, ()))

    def ids_with_status(self, status, limit=None):
        with self.s._lock:
            return list(self.s._index.get(status, {}))[:limit]

    def delete_job(self, job_id):
        with self.s._lock:
            job = self.s._jobs.pop(job_id, None)
            self.s._events.pop(job_id, None)
            self.s._leases.pop(job_id, None)
            for s in INDEXED:
                self.s._index[s].pop(job_id, None)
            if job is not None:
                self.s._active[job.tenant].discard(job_id)
                ids = self.s._by_tenant.get(job.tenant, [])
                if job_id in ids:
                    ids.remove(job_id)
                for k, (jid, _) in list(self.s._idem.items()):
                    if jid == job_id:
                        del self.s._idem[k]


class MemoryEvents:
    """Each job's event log, and the waiters it wakes."""

    def __init__(self, state: MemoryState):
        self.s = state

    def add_event(self, job_id, event, data):
        return self.s.add_event(job_id, event, data)

    def events(self, job_id, start=0):
        with self.s._lock:
            return list(self.s._events.get(job_id, [])[start:])

    def event_count(self, job_id):
        with self.s._lock:
            return len(self.s._events.get(job_id, []))

    def wait_events(self, job_id, count, timeout):
        deadline = time.monotonic() + timeout
        with self.s._lock:
            while len(self.s._events.get(job_id, [])) <= count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.s._changed.wait(left)
            return True

    def listen(self, callback, stop):
        with self.s._lock:
            self.s._listeners.append(callback)

        def drop() -> None:
            stop.wait()
            with self.s._lock:
                self.s._listeners.remove(callback)

        t = threading.Thread(target=drop, name="events-listener", daemon=True)
        t.start()
        return t


class MemoryLeases:
    """Running jobs' leases (written with the record by ``Jobs.update``; renewed here)."""

    def __init__(self, state: MemoryState):
        self.s = state

    def renew_lease(self, job_id, token, ttl):
        with self.s._lock:
            job = self.s._jobs.get(job_id)
            if job is None or job.status != JobStatus.running or job.lease_token != token:
                return False
            self.s._leases[job_id] = time.monotonic() + ttl
            return True

    def lease_alive(self, job_id):
        with self.s._lock:
            return self.s._leases.get(job_id, 0) > time.monotonic()


class MemoryLimits:
    """Rate limits, short locks, counters and histograms."""

    def __init__(self, state: MemoryState):
        self.s = state

    def incr(self, name, labels, value=1.0):
        with self.s._lock:
            self.s._counters[(name, _labels_key(labels))] += value

    def observe(self, name, labels, value, buckets):
        with self.s._lock:
            h = self.s._hist.setdefault(
                (name, _labels_key(labels)), {"buckets": {b: 0 for b in buckets}, "sum": 0.0, "count": 0}
            )
            for b in h["buckets"]:
                if value <= b:
                    h["buckets"][b] += 1
            h["sum"] += value
            h["count"] += 1

    def metrics_snapshot(self):
        with self.s._lock:
            return dict(self.s._counters), {k: {**v, "buckets": dict(v["buckets"])} for k, v in self.s._hist.items()}

    def rate_limit(self, key, limit, window_s):
        now = time.time()
        window = int(now // window_s)
        with self.s._lock:
            self.s._rate[(key, window)] += 1
            if self.s._rate[(key, window)] > limit:
                return (window + 1) * window_s - now
            return None

    def try_lock(self, name, ttl):
        with self.s._lock:
            now = time.monotonic()
            if self.s._locks.get(name, 0) > now:
                return False
            self.s._locks[name] = now + ttl
            return True


class MemoryRetention:
    """What to delete when (``job:{id}``, ``upload:{tenant}/{id}``)."""

    def __init__(self, state: MemoryState):
        self.s = state

    def schedule_expiry(self, member, at):
        with self.s._lock:
            self.s._expiry[member] = at

    def extend_expiry(self, member, at):
        with self.s._lock:
            self.s._expiry[member] = max(at, self.s._expiry.get(member, at))

    def due_expiries(self, now, limit=100):
        with self.s._lock:
            return sorted((m for m, at in self.s._expiry.items() if at <= now), key=self.s._expiry.get)[:limit]

    def forget_expiry(self, member):
        with self.s._lock:
            self.s._expiry.pop(member, None)


class MemoryRegistrations:
    """Models and LoRAs tenants trained, by name."""

    def __init__(self, state: MemoryState):
        self.s = state

    def register(self, tenant, kind, name, record):
        with self.s._lock:
            self.s._registry[(tenant, kind)][name] = dict(record)

    def registration(self, tenant, kind, name):
        with self.s._lock:
            r = self.s._registry.get((tenant, kind), {}).get(name)
            return dict(r) if r else None

    def registrations(self, tenant, kind):
        with self.s._lock:
            return [dict(r) for _, r in sorted(self.s._registry.get((tenant, kind), {}).items())]

    def unregister(self, tenant, kind, name):
        with self.s._lock:
            self.s._registry.get((tenant, kind), {}).pop(name, None)


class MemoryWebhooks:
    """Webhook deliveries by id, and when each is due."""

    def __init__(self, state: MemoryState):
        self.s = state

    def add(self, delivery, due):
        with self.s._lock:
            self.s._deliveries[delivery["id"]] = (json.dumps(delivery), due)

    def claim_due(self, now, lease_s, limit):
        with self.s._lock:
            due = sorted((t, i) for i, (_, t) in self.s._deliveries.items() if t <= now)[:limit]
            out = []
            for _, i in due:
                raw, _ = self.s._deliveries[i]
                self.s._deliveries[i] = (raw, now + lease_s)
                out.append(json.loads(raw))
            return out

    def reschedule(self, delivery, due):
        with self.s._lock:
            if delivery["id"] in self.s._deliveries:
                self.s._deliveries[delivery["id"]] = (json.dumps(delivery), due)

    def done(self, delivery_id):
        with self.s._lock:
            self.s._deliveries.pop(delivery_id, None)


def memory_store(job_ttl_s: float = 7 * 24 * 3600) -> JobStore:
    """The in-process store of embedded mode: dicts under one lock."""
    s = MemoryState(job_ttl_s)
    return JobStore(
        MemoryJobs(s),
        MemoryEvents(s),
        MemoryLeases(s),
        MemoryLimits(s),
        MemoryRetention(s),
        MemoryRegistrations(s),
        MemoryWebhooks(s),
        MemoryBacklog(),
        MemoryUsage(),
        s,
    )
