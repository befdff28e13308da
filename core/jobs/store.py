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
from typing import Callable

from core.schemas import JobRecord, JobStatus

Mutator = Callable[[JobRecord], JobRecord | None]
INDEXED = (JobStatus.queued, JobStatus.running)


class JobStore(ABC):
    @abstractmethod
    def create(self, job: JobRecord, idempotency: tuple[str, str] | None = None) -> tuple[JobRecord, bool]:
        """Store a new job. With ``idempotency=(key, body_hash)`` a repeat returns the first job and False."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def update(self, job_id: str, fn: Mutator) -> JobRecord | None:
        """Atomically apply ``fn`` to the job; ``fn`` returns the new record, or None to leave it as it is.

        Returns the record after the call (None if the job does not exist). Keeps the queued/running indexes.
        """

    @abstractmethod
    def list(self, tenant: str, limit: int, offset: int) -> list[JobRecord]: ...

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
    def ids_with_status(self, status: JobStatus) -> list[str]: ...

    @abstractmethod
    def set_lease(self, job_id: str, owner: str, ttl: float) -> None: ...

    @abstractmethod
    def lease_alive(self, job_id: str) -> bool: ...

    @abstractmethod
    def clear_lease(self, job_id: str) -> None: ...

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


def _labels_key(labels: dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


class MemoryJobStore(JobStore):
    """In-process store for embedded mode: dicts under one lock, a condition variable for waiters."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, JobRecord] = {}
        self._events: dict[str, list[dict]] = defaultdict(list)
        self._idem: dict[tuple[str, str], tuple[str, str]] = {}
        self._by_tenant: dict[str, list[str]] = defaultdict(list)
        self._index: dict[JobStatus, dict[str, None]] = {s: {} for s in INDEXED}
        self._leases: dict[str, float] = {}
        self._counters: dict[tuple, float] = defaultdict(float)
        self._hist: dict[tuple, dict] = {}
        self._rate: dict[tuple[str, int], int] = defaultdict(int)
        self._locks: dict[str, float] = {}
        self._registry: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)

    def create(self, job, idempotency=None):
        with self._lock:
            if idempotency:
                k = (job.tenant, idempotency[0])
                if k in self._idem:
                    first_id, body_hash = self._idem[k]
                    return self._check_idem(self._jobs[first_id], body_hash, idempotency[1]), False
                self._idem[k] = (job.id, idempotency[1])
            self._jobs[job.id] = job.model_copy(deep=True)
            self._by_tenant[job.tenant].append(job.id)
            if job.status in INDEXED:
                self._index[job.status][job.id] = None
            self._changed.notify_all()
            return job, True

    @staticmethod
    def _check_idem(job: JobRecord, stored_hash: str, new_hash: str) -> JobRecord:
        from core.errors import InputError

        if stored_hash != new_hash:
            raise InputError(
                "Idempotency-Key was already used with a different request body",
                field="Idempotency-Key",
                code="idempotency_conflict",
                status=409,
            )
        return job

    def get(self, job_id):
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy(deep=True) if job else None

    def update(self, job_id, fn):
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            new = fn(job.model_copy(deep=True))
            if new is None:
                return job.model_copy(deep=True)
            if new.status != job.status:
                for s in INDEXED:
                    self._index[s].pop(job_id, None)
                if new.status in INDEXED:
                    self._index[new.status][job_id] = None
            self._jobs[job_id] = new.model_copy(deep=True)
            self._changed.notify_all()
            return new

    def list(self, tenant, limit, offset):
        with self._lock:
            ids = self._by_tenant.get(tenant, [])[::-1][offset : offset + limit]
            return [self._jobs[i].model_copy(deep=True) for i in ids]

    def add_event(self, job_id, event, data):
        with self._lock:
            log = self._events[job_id]
            log.append({"seq": len(log), "event": event, "data": data})
            self._changed.notify_all()
            return len(log) - 1

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

    def ids_with_status(self, status):
        with self._lock:
            return list(self._index.get(status, {}))

    def set_lease(self, job_id, owner, ttl):
        with self._lock:
            self._leases[job_id] = time.monotonic() + ttl

    def lease_alive(self, job_id):
        with self._lock:
            return self._leases.get(job_id, 0) > time.monotonic()

    def clear_lease(self, job_id):
        with self._lock:
            self._leases.pop(job_id, None)

    def incr(self, name, labels, value=1.0):
        with self._lock:
            self._counters[(name, _labels_key(labels))] += value

    def observe(self, name, labels, value, buckets):
        with self._lock:
            h = self._hist.setdefault((name, _labels_key(labels)), {"buckets": {b: 0 for b in buckets}, "sum": 0.0, "count": 0})
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
