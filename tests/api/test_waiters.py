"""Waiters: one listener wakes the asyncio events of the jobs that changed; long-polls wake on status changes only."""

import asyncio
import threading
import time

import pytest

from api.waiters import Waiters, wait_for
from core.errors import QuotaExceeded
from core.jobs.store import memory_store


def test_long_polls_wake_on_status_streams_on_every_event():
    async def scenario():
        store = memory_store()
        waiters = Waiters(store, max_per_tenant=2)
        stop = threading.Event()
        waiters.start(stop)
        async with waiters.watch("t", "job_1", every_event=False) as poll, waiters.watch("t", "job_1") as stream:
            with pytest.raises(QuotaExceeded):
                async with waiters.watch("t", "job_2"):
                    pass
            await asyncio.to_thread(store.events.add_event, "job_1", "progress", {"step": 1})
            assert await wait_for(stream, 5) and not poll.is_set()
            stream.clear()
            await asyncio.to_thread(store.events.add_event, "job_1", "status", {"status": "succeeded"})
            assert await wait_for(poll, 5) and await wait_for(stream, 5)
            await asyncio.to_thread(store.events.add_event, "job_2", "status", {"status": "queued"})
        async with waiters.watch("t", "job_3") as other:  # the slots came back
            assert not await wait_for(other, 0.05)
        stop.set()

    asyncio.run(scenario())


def test_event_streams_take_their_slot_before_they_start():
    """Streams opened together: past the cap a 429 at once, never a stream that passes the check and breaks when it
    starts; a stream that never starts gives its slot back with the response's background task."""
    from types import SimpleNamespace

    from api.routes.jobs import job_events
    from core.jobs import lifecycle
    from core.schemas import JobType

    async def scenario():
        store = memory_store()
        job = lifecycle.new_job(JobType.txt2img, {}, "t")
        store.jobs.create(job)
        b = SimpleNamespace(store=store, waiters=Waiters(store, max_per_tenant=2))
        opened = [await job_events(job.id, "t", b, None) for _ in range(2)]
        with pytest.raises(QuotaExceeded):
            await job_events(job.id, "t", b, None)
        await opened[0].background()  # the first never started: its slot comes back
        await opened[0].background()  # (once)
        third = await job_events(job.id, "t", b, None)
        with pytest.raises(QuotaExceeded):
            await job_events(job.id, "t", b, None)
        stream = third.body_iterator
        await asyncio.to_thread(store.events.add_event, job.id, "status", {"status": "canceled"})
        assert "canceled" in await anext(stream)
        with pytest.raises(StopAsyncIteration):  # the terminal status ends the stream and frees its slot
            await anext(stream)
        await job_events(job.id, "t", b, None)

    asyncio.run(scenario())


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_a_long_poll_on_a_remote_store_takes_the_record_the_listener_read(store_kind, request):
    """With a remote store, the listener thread reads a long-polled job's record as its status event arrives and hands
    it to the waiter with the wake: the waiter's own read (a threadpool round trip after the wake) is saved. The first
    read (whose job this is) still goes through ``read``; the answer is the finished record."""
    from core.jobs import lifecycle
    from core.schemas import JobStatus, JobType

    if store_kind == "memory":
        store = memory_store()
    else:
        from core.jobs.redis_store import redis_store

        store = redis_store(request.getfixturevalue("redis_server"))
    reads = []

    def subscriptions() -> int:  # the pattern subscriptions on the server (the listener's among them once it listens)
        if store_kind == "memory":
            return len(store.backend._listeners)
        return store.backend.r.execute_command("PUBSUB", "NUMPAT")

    def read(job_id):
        reads.append(job_id)
        return store.jobs.get(job_id)

    async def scenario():
        waiters = Waiters(store, max_per_tenant=2, inline=False)  # as in distributed mode
        stop = threading.Event()
        subscribed = subscriptions()
        waiters.start(stop)
        await asyncio.to_thread(lambda: assert_eventually(lambda: subscriptions() > subscribed))
        job = lifecycle.new_job(JobType.txt2img, {}, "t")
        store.jobs.create(job)
        claimed = lifecycle.claim(store, job.id, "w", 10)
        polling = asyncio.create_task(waiters.read_until_terminal("t", job.id, 10, read))
        await asyncio.to_thread(lambda: assert_eventually(lambda: reads == [job.id]))
        await asyncio.to_thread(lifecycle.finish, store, job.id, claimed.lease_token, JobStatus.succeeded)
        done = await asyncio.wait_for(polling, 10)
        stop.set()
        return done

    done = asyncio.run(scenario())
    assert done.status == JobStatus.succeeded and done.finished_at is not None
    assert len(reads) == 1  # the wake's read was the listener's


def assert_eventually(check, timeout=5.0):
    from tests.conftest import wait_for as wait

    wait(check, timeout, what="the listener, then the long-poll's first read")


@pytest.mark.parametrize("then", ["a read that failed", "a reconnect"])
def test_a_record_the_listener_read_never_outlives_a_newer_event(then):
    """The listener's record for a long-poll is the newest state or none: a later status event whose read failed (or
    was skipped), or a reconnect (events were missed), drops it, so the waiter reads afresh instead of taking an
    older 'running' and sleeping out its wait on a job that has finished."""
    from core.jobs import lifecycle
    from core.schemas import JobStatus, JobType

    store = memory_store()
    job = lifecycle.new_job(JobType.txt2img, {}, "t")
    store.jobs.create(job)
    claimed = lifecycle.claim(store, job.id, "w", 10)
    running = store.jobs.get(job.id)

    async def scenario():
        # inline: the long-poll's first read runs on the loop, so it is known to wait once its slot is held; the
        # wakes below are what the listener thread hands over (remote or not, the waiter takes them alike)
        waiters = Waiters(store, max_per_tenant=2, inline=True)
        polling = asyncio.create_task(waiters.read_until_terminal("t", job.id, 3, store.jobs.get))
        deadline = time.monotonic() + 5
        while waiters._open["t"] == 0 and time.monotonic() < deadline:  # read 'running', now waiting
            await asyncio.sleep(0)
        lifecycle.finish(store, job.id, claimed.lease_token, JobStatus.succeeded)
        waiters._wake(job.id, "status", running)  # an earlier event's record, not yet taken...
        if then == "a read that failed":
            waiters._wake(job.id, "status", None)  # ...then the terminal event, its read failed
        else:
            waiters._wake(None, None)  # ...then the listener reconnected
        t0 = time.monotonic()
        done = await asyncio.wait_for(polling, 5)
        return done, time.monotonic() - t0

    done, took = asyncio.run(scenario())
    assert done.status == JobStatus.succeeded and took < 1.0, (done.status, took)


def test_the_listener_spends_a_bounded_share_of_its_time_reading_for_long_polls():
    """Past ``PREFETCH_SHARE`` of its time in a window the listener stops reading records (waiters read for
    themselves, in parallel): a slow store or a burst of jobs ending together never queues every wake behind it."""
    from api import waiters as module
    from core.jobs import lifecycle
    from core.schemas import JobType

    store = memory_store()
    job = lifecycle.new_job(JobType.txt2img, {}, "t")
    store.jobs.create(job)
    waiters = Waiters(store, max_per_tenant=2, inline=False)
    assert waiters._prefetch(job.id).id == job.id
    waiters._spent = module.PREFETCH_SHARE * module.PREFETCH_WINDOW_S + 0.01  # the window's share is spent
    assert waiters._prefetch(job.id) is None
    waiters._window -= module.PREFETCH_WINDOW_S + 0.01  # a new window
    assert waiters._prefetch(job.id).id == job.id
