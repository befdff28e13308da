"""The lease of a running job, kept alive: one beater thread per process renews every running job's lease."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from core.jobs.store import JobStore

log = logging.getLogger("diffuserve.worker")


class Heartbeat:
    """Renews the job's lease while it runs; when the process dies the lease expires and the reaper re-queues.
    When a renewal finds the job no longer ours, ``on_lost`` is called and the beating stops.

    One beater thread per process renews every running job's lease (a thread started and joined per job cost about
    0.25 ms of each job's round trip)."""

    _lock = threading.Lock()
    _wake = threading.Condition(_lock)
    _beating: dict[int, Heartbeat] = {}
    _thread: threading.Thread | None = None

    def __init__(
        self, store: JobStore, job_id: str, token: str, ttl: float, interval: float, on_lost: Callable[[], None]
    ):
        self.store, self.job_id, self.token, self.ttl, self.interval = store, job_id, token, ttl, interval
        self.on_lost = on_lost
        self.due = 0.0
        # until when the lease is known to live (monotonic): a renewal sent at t that succeeded holds it to t + ttl;
        # the claim's own lease counts from ``claimed_at`` (set by the caller: a time before the claim was sent)
        self.alive_until = float("-inf")

    def claimed_at(self, t: float) -> Heartbeat:
        self.alive_until = max(self.alive_until, t + self.ttl)
        return self

    @classmethod
    def _loop(cls) -> None:
        while True:
            with cls._lock:
                now = time.monotonic()
                due = [hb for hb in cls._beating.values() if hb.due <= now]
                for hb in due:
                    hb.due = now + hb.interval
                if not due:
                    nearest = min((hb.due for hb in cls._beating.values()), default=now + 60)
                    cls._wake.wait(max(0.0, nearest - now))
                    continue
            for hb in due:  # outside the lock: a slow store never blocks a job from starting or ending
                hb._beat()

    def _beat(self) -> None:
        sent = time.monotonic()
        try:
            renewed = self.store.leases.renew_lease(self.job_id, self.token, self.ttl)
            if renewed:
                self.alive_until = max(self.alive_until, sent + self.ttl)
            if not renewed:
                with self._lock:
                    if self._beating.pop(id(self), None) is None:
                        return  # the job ended while this beat was in flight
                log.warning("job %s: lease lost; stopping", self.job_id)
                self.on_lost()
        except Exception as e:  # noqa: BLE001 - a missed beat is retried; the lease outlives a few
            log.warning("heartbeat for %s failed: %s", self.job_id, type(e).__name__)

    def __enter__(self) -> Heartbeat:
        cls = type(self)
        with cls._lock:
            self.due = time.monotonic() + self.interval
            cls._beating[id(self)] = self
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(target=cls._loop, name="heartbeat", daemon=True)
                cls._thread.start()
            cls._wake.notify()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._beating.pop(id(self), None)
