"""Waiters: one listener wakes the asyncio events of the jobs that changed; long-polls wake on status changes only."""

import asyncio
import threading

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
