"""The Redis store's batches on a real redis-server: a job's end sends its status event before its metrics, and
the broker keeps one client per channel."""

from __future__ import annotations

import threading
import uuid

import redis

from core.jobs.queue import CeleryQueue, celery_config
from core.jobs.redis_store import RedisConn, redis_store


def test_with_metrics_after_the_event_goes_out_before_the_metrics_are_built(redis_server, monkeypatch):
    """``batch(metrics_after=True)`` (a job's end): the events that wake clients go out in the first round trip,
    the counters and histograms in a second one after it; both land."""
    store = redis_store(redis_server)
    flushed: list[list[str]] = []
    flush = RedisConn._flush

    def spy(self, pipe):
        flushed.append([str(args[0]) for args, _ in pipe.command_stack])
        return flush(self, pipe)

    monkeypatch.setattr(RedisConn, "_flush", spy)
    job_id = f"job_{uuid.uuid4().hex}"
    with store.batch(metrics_after=True):
        store.limits.incr("test_counter_total", {"case": job_id})
        store.events.add_event(job_id, "status", {"id": job_id, "status": "succeeded"})
        store.limits.observe("test_seconds", {"case": job_id}, 0.2, (0.1, 1.0))
    assert "RPUSH" in flushed[0] and "PUBLISH" in flushed[0] and "HINCRBYFLOAT" not in flushed[0]
    assert "HINCRBYFLOAT" in flushed[1] and "HINCRBY" in flushed[1] and "RPUSH" not in flushed[1]
    counters, hists = store.limits.metrics_snapshot()
    assert counters[("test_counter_total", (("case", job_id),))] == 1.0
    assert hists[("test_seconds", (("case", job_id),))]["buckets"] == {0.1: 0, 1.0: 1}
    assert [e["event"] for e in store.events.events(job_id)] == ["status"]
    flushed.clear()
    with store.batch():  # without it: one round trip, metrics included
        store.limits.incr("test_counter_total", {"case": job_id})
        store.events.add_event(job_id, "status", {"id": job_id, "status": "succeeded"})
    assert len(flushed) == 1 and "HINCRBYFLOAT" in flushed[0]
    store.close()


def test_the_broker_keeps_one_client_per_channel(redis_server, monkeypatch):
    """kombu builds a redis-py client per publish (its constructor cost more than the LPUSH); ours keeps one. The
    messages still arrive, and rediss:// keeps kombu's own transport."""
    created = []
    init = redis.Redis.__init__
    here = threading.current_thread()

    def counting(self, *a, **kw):
        if threading.current_thread() is here:  # this test's publishes, not another test's threads
            created.append(1)
        init(self, *a, **kw)

    queue = CeleryQueue(redis_server)
    name = f"q-{uuid.uuid4().hex[:8]}"
    queue.enqueue("job_warm", name)  # the connection, its channel and pools
    monkeypatch.setattr(redis.Redis, "__init__", counting)
    for i in range(20):
        queue.enqueue(f"job_{i}", name)
    assert len(created) <= 1, len(created)
    assert redis.Redis.from_url(redis_server).llen(name) == 21
    assert celery_config(redis_server)["broker_transport"] == "core.jobs.broker:Transport"
    assert "broker_transport" not in celery_config("rediss://example.com:6380/0")
