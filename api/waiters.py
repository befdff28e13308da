"""Long-polls and event streams wait here, on the event loop, without a threadpool token or a Redis connection each:
one listener thread per gateway (the store's ``listen``) wakes the asyncio events of the jobs that changed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext

from fastapi.concurrency import run_in_threadpool

from core.errors import QuotaExceeded
from core.jobs.store import JobStore

PREFETCH_SHARE = 0.25  # of the listener thread's time, at most, on reading records for long-polls
PREFETCH_WINDOW_S = 1.0
PREFETCH_FLOOR_S = 0.1  # a window's first moments allow this much of it (a burst's first reads go through)


class Waiters:
    def __init__(self, store: JobStore, max_per_tenant: int, inline: bool | None = None):
        """``inline`` (by default: the store is not remote): the store answers from memory, so a read runs on the loop
        (a thread hop would cost more than the read); a remote store's reads run in the threadpool."""
        self.store = store
        self.max_per_tenant = max_per_tenant
        self.inline = not store.backend.remote if inline is None else inline
        self._events: dict[str, dict[asyncio.Event, bool]] = defaultdict(dict)  # event -> wants progress too
        self._open: dict[str, int] = defaultdict(int)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fresh: dict[str, object] = {}  # job id -> its record, read by the listener thread after a status event
        self._window, self._spent = time.monotonic(), 0.0  # the listener's time on those reads, this window

    def start(self, stop: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self.store.events.listen(self._on_event, stop)

    def _on_event(self, job_id: str | None, event: str | None) -> None:  # the listener thread
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        record = None
        if not self.inline and event == "status" and job_id is not None and self._long_polled(job_id):
            record = self._prefetch(job_id)
        loop.call_soon_threadsafe(self._wake, job_id, event, record)

    def _long_polled(self, job_id: str) -> bool:
        """A long-poll (status changes only: it reads the record after a wake) waits on ``job_id``. Read on the
        listener thread from the loop's dicts: a copy of the values is taken whole under the GIL."""
        try:
            return any(not every for every in list(self._events.get(job_id, {}).values()))
        except RuntimeError:  # changed while copied: the waiter reads for itself
            return False

    def _prefetch(self, job_id: str) -> object | None:
        """The record a long-poll would read after this status event, read here at once: this thread is awake
        already, where the waiter's own read would wake the loop, then a threadpool thread, then the loop again.
        At most ``PREFETCH_SHARE`` of this thread's time goes to such reads (a slow store, or a burst of jobs ending
        together, must not delay every other wake behind them: past it the waiters read for themselves, in
        parallel); None when skipped or failed (the waiter then reads, and meets any error itself)."""
        now = time.monotonic()
        if now - self._window > PREFETCH_WINDOW_S:
            self._window, self._spent = now, 0.0
        if self._spent > PREFETCH_SHARE * max(now - self._window, PREFETCH_FLOOR_S):
            return None
        try:
            return self.store.jobs.get(job_id)
        except Exception:  # noqa: BLE001 - the waiter reads for itself
            return None
        finally:
            self._spent += time.monotonic() - now

    def _wake(self, job_id: str | None, event: str | None, record: object = None) -> None:
        if job_id is None:  # the listener reconnected: events were missed, every waiter reads afresh
            self._fresh.clear()
        elif event == "status":  # the newest state, or none (a read that failed or was skipped: read afresh)
            if record is not None and job_id in self._events:
                self._fresh[job_id] = record
            else:
                self._fresh.pop(job_id, None)
        groups = self._events.values() if job_id is None else [self._events.get(job_id, {})]
        for group in groups:
            for ev, every_event in group.items():
                if every_event or event in (None, "status"):
                    ev.set()

    def check(self, tenant: str) -> None:
        if self._open[tenant] >= self.max_per_tenant:
            raise QuotaExceeded(
                f"at most {self.max_per_tenant} open long-polls and event streams per tenant",
                retry_after=2,
                code="too_many_waits",
            )

    def take(self, tenant: str) -> Callable[[], None]:
        """One of the tenant's open waits, taken now (429 ``too_many_waits`` past the cap), for a wait whose end is
        not a block: an event stream, which runs after its handler returned. Returns its release, which may be
        called more than once (the stream's end and the response's background task both call it)."""
        self.check(tenant)
        self._open[tenant] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[tenant] -= 1

        return release

    @contextmanager
    def held(self, tenant: str) -> Iterator[None]:
        """One of the tenant's open waits, held for the block (429 ``too_many_waits`` past the cap). A call that
        submits and then waits takes it before it submits, so a refusal leaves no job behind; its waits inside the
        block pass ``held=True``."""
        self.check(tenant)
        self._open[tenant] += 1
        try:
            yield
        finally:
            self._open[tenant] -= 1

    @asynccontextmanager
    async def watch(
        self, tenant: str, job_id: str, every_event: bool = True, held: bool = False
    ) -> AsyncIterator[asyncio.Event]:
        """An event set whenever ``job_id`` gets an event (``every_event`` False: status changes only, what a
        long-poll waits for; a 1000-step job then wakes it twice, not 1000 times); counts against the tenant's open
        waits (429 past it) unless the caller ``held`` one already. Clear it before reading the store, then wait on
        it: nothing in between is missed."""
        with nullcontext() if held else self.held(tenant):
            ev = asyncio.Event()
            self._events[job_id][ev] = every_event
            try:
                yield ev
            finally:
                self._forget(job_id, ev)

    async def _read(self, read: Callable[[str], object], job_id: str):
        return read(job_id) if self.inline else await run_in_threadpool(read, job_id)

    async def _reread(self, read: Callable[[str], object], job_id: str):
        """After a wake: the record the listener read after the status event (already this waiter's job: its first
        read checked whose it is), else ``read``. Taken with the wake's clear, on the loop: a later event sets both
        again."""
        fresh = self._fresh.pop(job_id, None)
        return fresh if fresh is not None else await self._read(read, job_id)

    def _forget(self, job_id: str, ev: asyncio.Event) -> None:
        group = self._events.get(job_id)
        if group is not None:
            group.pop(ev, None)
            if not group:
                del self._events[job_id]
                self._fresh.pop(job_id, None)

    async def read_until_terminal(self, tenant: str, job_id: str, wait: float, read: Callable[[str], object]):
        """``read(job_id)`` (its errors, a 404, raised as they are), then, unless terminal, :meth:`until_terminal`
        without a second read: the wake-up is registered before the first read, so a change after it is never
        missed."""
        if wait <= 0:
            return await self._read(read, job_id)
        deadline = time.monotonic() + wait
        changed = asyncio.Event()
        self._events[job_id][changed] = False  # status changes only
        try:
            job = await self._read(read, job_id)
            if job.status.is_terminal():
                return job
            with self.held(tenant):  # counts against the tenant's open waits (429 past it) once the job is known
                while await wait_for(changed, deadline - time.monotonic()):
                    changed.clear()  # before the read: a change after it wakes the wait again
                    job = await self._reread(read, job_id) or job
                    if job.status.is_terminal():
                        break
            return job
        finally:
            self._forget(job_id, changed)

    async def until_terminal(self, tenant: str, job, wait: float, read: Callable[[str], object], held: bool = False):
        """``job`` once terminal, or as ``read(job.id)`` last gave it after ``wait``
        seconds: woken by its status events, no thread or connection held while waiting."""
        deadline = time.monotonic() + wait
        async with self.watch(tenant, job.id, every_event=False, held=held) as changed:
            first = True
            while not job.status.is_terminal():
                changed.clear()  # before the read: a change after it wakes the wait below
                job = await (self._read(read, job.id) if first else self._reread(read, job.id)) or job
                first = False
                if job.status.is_terminal() or not await wait_for(changed, deadline - time.monotonic()):
                    break
        return job


async def wait_for(ev: asyncio.Event, timeout: float) -> bool:
    """True when ``ev`` was set within ``timeout`` seconds."""
    if timeout <= 0:
        return ev.is_set()
    try:
        await asyncio.wait_for(ev.wait(), timeout)
        return True
    except TimeoutError:
        return False
