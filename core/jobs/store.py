"""The job store: job records, their event logs, the queued/running indexes, leases, metrics, rate limits.

Two adapters with one contract: :class:`MemoryJobStore` (embedded mode) and
:class:`core.jobs.redis_store.RedisJobStore` (distributed mode). Everything above them
(:mod:`core.jobs.lifecycle`) is written once against this interface.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable

from core.errors import Conflict, QuotaExceeded
from core.schemas import JobRecord, JobStatus

Mutator = Callable[[JobRecord], JobRecord | None]
INDEXED = (JobStatus.queued, JobStatus.running)


class JobStore(ABC):
    """Raises :class:`core.errors.Unavailable` when its backend cannot be reached."""

    job_ttl_s: float = 7 * 24 * 3600

    @abstractmethod
    def create(
        self, job: JobRecord, idempotency: tuple[str, str] | None = None, max_active: int | None = None
    ) -> tuple[JobRecord, bool]:
        """Store a new job, atomically. With ``idempotency=(key, body_hash)`` a repeat returns the first job and
        False (another body: :class:`Conflict`). With ``max_active``, a tenant that already has that many queued or
        running jobs gets :class:`QuotaExceeded`."""

    @abstractmethod
    def release_idempotency(self, tenant: str, key: str, job_id: str) -> None:
        """Forget ``key`` if it still names ``job_id`` (a submit that could not be enqueued)."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def update(self, job_id: str, fn: Mutator, lease: tuple[str, float] | None = None) -> JobRecord | None:
        """Atomically apply ``fn`` to the job; ``fn`` returns the new record, or None to leave it as it is.

        Returns the record after the call (None if the job does not exist). Keeps the queued/running and per-tenant
        active indexes; a job turning terminal is scheduled for deletion after ``job_ttl_s``. With ``lease=(token,
        ttl)`` the job's lease is written in the same atomic step (``ttl`` 0: dropped) when ``fn`` changed the job.
        """

    @abstractmethod
    def renew_lease(self, job_id: str, token: str, ttl: float) -> bool:
        """Extend the lease only while the job is running under ``token``; False when the caller lost it."""

    @abstractmethod
    def lease_alive(self, job_id: str) -> bool: ...

    @abstractmethod
    def list(self, tenant: str, limit: int, offset: int) -> list[JobRecord]: ...

    @abstractmethod
    def active_count(self, tenant: str) -> int:
        """Queued + running jobs of the tenant."""

    @abstractmethod
    def add_event(self, job_id: str, event: str, data: dict) -> int:
        """Append to the job's event log (replayed to late SSE subscribers); returns its sequence number."""

    @abstractmethod
    def events(self, job_id: str, start: int = 0) -> list[dict]: ...

    @abstractmethod
    def event_count(self, job_id: str) -> int: ...

    @abstractmethod
    def wait_events(self, job_id: str, count: int, timeout: float) -> bool:
        """Block until the job has more than ``count`` events, or ``timeout`` seconds pass."""

    @abstractmethod
    def listen(
        self, callback: Callable[[str | None, str | None], None], stop: threading.Event
    ) -> threading.Thread | None:
        """Call ``callback(job_id, event)`` whenever a job gets an event (``(None, None)``: maybe missed some,
        re-check all), until ``stop`` is set. One listener serves every waiter of a gateway."""

    @abstractmethod
    def ids_with_status(self, status: JobStatus) -> list[str]: ...

    # -- retention: things to delete at a time (``job:{id}``, ``upload:{tenant}/{id}``) ----------------
    @abstractmethod
    def schedule_expiry(self, member: str, at: float) -> None: ...

    @abstractmethod
    def due_expiries(self, now: float, limit: int = 100) -> list[str]: ...

    @abstractmethod
    def forget_expiry(self, member: str) -> None: ...

    @abstractmethod
    def delete_job(self, job_id: str) -> None:
        """Remove the record, its events and its index entries."""

    @abstractmethod
    def incr(self, name: str, labels: dict[str, str], value: float = 1.0) -> None: ...

    @abstractmethod
    def observe(self, name: str, labels: dict[str, str], value: float, buckets: tuple[float, ...]) -> None: ...

    @abstractmethod
    def metrics_snapshot(self) -> tuple[dict, dict]:
        """(counters {(name, labels_tuple): value}, histograms {(name, labels_tuple): {"buckets", "sum", "count"}})."""

    @abstractmethod
    def rate_limit(self, key: str, limit: int, window_s: int) -> float | None:
        """Count one hit; return seconds to wait when over ``limit`` per window, else None."""

    @abstractmethod
    def try_lock(self, name: str, ttl: float) -> bool: ...

    @abstractmethod
    def ping(self) -> bool: ...

    # -- what tenants trained: models and LoRAs registered under a name, files in storage --------------
    @abstractmethod
    def register(self, tenant: str, kind: str, name: str, record: dict) -> None: ...

    @abstractmethod
    def registration(self, tenant: str, kind: str, name: str) -> dict | None: ...

    @abstractmethod
    def registrations(self, tenant: str, kind: str) -> list[dict]: ...

    def close(self) -> None:
        pass


def check_idempotency(job: JobRecord, stored_hash: str, new_hash: str) -> JobRecord:
    if stored_hash != new_hash:
        raise Conflict(
            "Idempotency-Key was already used with a different request body",
            field="Idempotency-Key",
            code="idempotency_conflict",
        )
    return job


def over_quota(tenant: str, max_active: int) -> QuotaExceeded:
    return QuotaExceeded(f"tenant {tenant!r} already has {max_active} queued or running jobs", retry_after=5)


def _labels_key(labels: dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


class MemoryJobStore(JobStore):
    """In-process store for embedded mode: dicts under one lock, a condition variable for waiters."""

    def __init__(self, job_ttl_s: float = 7 * 24 * 3600) -> None:
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

    def create(self, job, idempotency=None, max_active=None):
        with self._lock:
            if idempotency:
                k = (job.tenant, idempotency[0])
                first = self._idem.get(k)
                if first and first[0] in self._jobs:
                    return check_idempotency(
                        self._jobs[first[0]].model_copy(deep=True), first[1], idempotency[1]
                    ), False
            if max_active is not None and len(self._active[job.tenant]) >= max_active:
                raise over_quota(job.tenant, max_active)
            if idempotency:
                self._idem[(job.tenant, idempotency[0])] = (job.id, idempotency[1])
            self._jobs[job.id] = job.model_copy(deep=True)
            self._by_tenant[job.tenant].append(job.id)
            self._reindex(job.id, None, job)
            self._changed.notify_all()
            return job, True

    def release_idempotency(self, tenant, key, job_id):
        with self._lock:
            if self._idem.get((tenant, key), ("",))[0] == job_id:
                del self._idem[(tenant, key)]

    def _reindex(self, job_id: str, old: JobRecord | None, new: JobRecord) -> None:
        if old is not None and old.status == new.status:
            return
        for s in INDEXED:
            self._index[s].pop(job_id, None)
        if new.status in INDEXED:
            self._index[new.status][job_id] = None
            self._active[new.tenant].add(job_id)
        else:
            self._active[new.tenant].discard(job_id)
            self._expiry[f"job:{job_id}"] = time.time() + self.job_ttl_s

    def get(self, job_id):
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy(deep=True) if job else None

    def update(self, job_id, fn, lease=None):
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            new = fn(job.model_copy(deep=True))
            if new is None:
                return job.model_copy(deep=True)
            self._reindex(job_id, job, new)
            self._jobs[job_id] = new.model_copy(deep=True)
            if lease is not None:
                if lease[1] > 0:
                    self._leases[job_id] = time.monotonic() + lease[1]
                else:
                    self._leases.pop(job_id, None)
            self._changed.notify_all()
            return new

    def renew_lease(self, job_id, token, ttl):
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != JobStatus.running or job.lease_token != token:
                return False
            self._leases[job_id] = time.monotonic() + ttl
            return True

    def lease_alive(self, job_id):
        with self._lock:
            return self._leases.get(job_id, 0) > time.monotonic()

    def list(self, tenant, limit, offset):
        with self._lock:
            ids = self._by_tenant.get(tenant, [])[::-1][offset : offset + limit]
            return [self._jobs[i].model_copy(deep=True) for i in ids]

    def active_count(self, tenant):
        with self._lock:
            return len(self._active.get(tenant, ()))

    def add_event(self, job_id, event, data):
        with self._lock:
            log = self._events[job_id]
            log.append({"seq": len(log), "event": event, "data": data})
            self._changed.notify_all()
            seq = len(log) - 1
            listeners = list(self._listeners)
        for cb in listeners:
            cb(job_id, event)
        return seq

    def events(self, job_id, start=0):
        with self._lock:
            return list(self._events.get(job_id, [])[start:])

    def event_count(self, job_id):
        with self._lock:
            return len(self._events.get(job_id, []))

    def wait_events(self, job_id, count, timeout):
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._events.get(job_id, [])) <= count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def listen(self, callback, stop):
        with self._lock:
            self._listeners.append(callback)

        def drop() -> None:
            stop.wait()
            with self._lock:
                self._listeners.remove(callback)

        t = threading.Thread(target=drop, name="events-listener", daemon=True)
        t.start()
        return t

    def ids_with_status(self, status):
        with self._lock:
            return list(self._index.get(status, {}))

    def schedule_expiry(self, member, at):
        with self._lock:
            self._expiry[member] = at

    def due_expiries(self, now, limit=100):
        with self._lock:
            return sorted((m for m, at in self._expiry.items() if at <= now), key=self._expiry.get)[:limit]

    def forget_expiry(self, member):
        with self._lock:
            self._expiry.pop(member, None)

    def delete_job(self, job_id):
        with self._lock:
            job = self._jobs.pop(job_id, None)
            self._events.pop(job_id, None)
            self._leases.pop(job_id, None)
            for s in INDEXED:
                self._index[s].pop(job_id, None)
            if job is not None:
                self._active[job.tenant].discard(job_id)
                ids = self._by_tenant.get(job.tenant, [])
                if job_id in ids:
                    ids.remove(job_id)
                for k, (jid, _) in list(self._idem.items()):
                    if jid == job_id:
                        del self._idem[k]

    def incr(self, name, labels, value=1.0):
        with self._lock:
            self._counters[(name, _labels_key(labels))] += value

    def observe(self, name, labels, value, buckets):
        with self._lock:
            h = self._hist.setdefault(
                (name, _labels_key(labels)), {"buckets": {b: 0 for b in buckets}, "sum": 0.0, "count": 0}
            )
            for b in h["buckets"]:
                if value <= b:
                    h["buckets"][b] += 1
            h["sum"] += value
            h["count"] += 1

    def metrics_snapshot(self):
        with self._lock:
            return dict(self._counters), {k: {**v, "buckets": dict(v["buckets"])} for k, v in self._hist.items()}

    def rate_limit(self, key, limit, window_s):
        now = time.time()
        window = int(now // window_s)
        with self._lock:
            self._rate[(key, window)] += 1
            if self._rate[(key, window)] > limit:
                return (window + 1) * window_s - now
            return None

    def try_lock(self, name, ttl):
        with self._lock:
            now = time.monotonic()
            if self._locks.get(name, 0) > now:
                return False
            self._locks[name] = now + ttl
            return True

    def ping(self):
        return True

    def register(self, tenant, kind, name, record):
        with self._lock:
            self._registry[(tenant, kind)][name] = dict(record)

    def registration(self, tenant, kind, name):
        with self._lock:
            r = self._registry.get((tenant, kind), {}).get(name)
            return dict(r) if r else None

    def registrations(self, tenant, kind):
        with self._lock:
            return [dict(r) for _, r in sorted(self._registry.get((tenant, kind), {}).items())]
