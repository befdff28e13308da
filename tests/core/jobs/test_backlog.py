"""The backlog in memory and on a real Redis: the same answers, (tenant, level) heads, passes that join at the floor
and grow by 1 / weight, idempotent adds."""

from __future__ import annotations

import uuid

import pytest

from core.jobs.backlog import MemoryBacklog, RedisBacklog
from core.jobs.schedule import Waiting, pick


@pytest.fixture(params=["memory", "redis"])
def backlog(request):
    if request.param == "memory":
        return MemoryBacklog()
    import redis

    r = redis.Redis.from_url(request.getfixturevalue("redis_server"))
    return RedisBacklog(r, prefix=f"test:{uuid.uuid4().hex[:8]}:")


def w(job_id, tenant, level=1, since=0.0, model="m"):
    return Waiting(job_id, tenant, level, model, since)


def test_heads_are_the_oldest_of_each_tenant_and_level(backlog):
    for job in (w("a1", "a", 1, 1), w("a2", "a", 1, 0.5), w("a3", "a", 0, 9), w("b1", "b", 2, 3)):
        assert backlog.add("inference", job)
    assert not backlog.add("inference", w("a1", "a", 1, 1))  # already waiting
    assert {h.job_id for h in backlog.heads("inference")} == {"a2", "a3", "b1"}
    assert backlog.depth("inference") == {(1, "m"): 2, (0, "m"): 1, (2, "m"): 1}
    assert backlog.heads("training") == []


def test_taking_charges_the_tenant_by_its_weight_and_a_joiner_starts_at_the_floor(backlog):
    q = "inference"
    for i in range(3):
        backlog.add(q, w(f"a{i}", "a", since=i), weight=2.0)
    assert backlog.take(q, "a0").tenant == "a"
    assert backlog.take(q, "a1").job_id == "a1"
    assert backlog.passes(q)["a"] == pytest.approx(1.0)  # two jobs at weight 2
    backlog.add(q, w("b0", "b", since=10))  # b joins while a waits: at a's pass, not at 0
    assert backlog.passes(q)["b"] == pytest.approx(1.0)
    assert backlog.take(q, "zz") is None
    assert backlog.take(q, "b0", charge=False) is not None and backlog.passes(q)["b"] == pytest.approx(1.0)
    nxt = pick(backlog.heads(q), backlog.passes(q), 20, 300)
    assert nxt.job_id == "a2"


def test_a_flood_then_a_newcomer_through_the_store(backlog):
    q = "inference"
    for i in range(30):
        backlog.add(q, w(f"a{i}", "a", since=i))
    first = pick(backlog.heads(q), backlog.passes(q), 100, 300)
    backlog.take(q, first.job_id)
    backlog.add(q, w("b0", "b", since=100))
    order = []
    for _ in range(3):
        nxt = pick(backlog.heads(q), backlog.passes(q), 101, 300)
        backlog.take(q, nxt.job_id)
        order.append(nxt.tenant)
    assert order.index("b") <= 1, order


def test_the_view_tells_each_heads_line_so_a_worker_knows_a_lone_job(backlog):
    """``view`` gives each head the length of its (tenant, level, model) line: what lets a worker skip looking for
    batch company when nothing else waits for the model (one round trip less on every lone job's way)."""
    q = "inference"
    backlog.add(q, w("a1", "a", since=1))
    heads, _ = backlog.view(q)
    assert [(h.job_id, h.line) for h in heads] == [("a1", 1)]
    backlog.add(q, w("a2", "a", since=2))
    backlog.add(q, w("b1", "b", since=3, model="other"))
    lines = {h.job_id: h.line for h in backlog.view(q)[0]}
    assert lines == {"a1": 2, "b1": 1}
    backlog.take(q, "a1")
    assert {h.job_id: h.line for h in backlog.view(q)[0]} == {"a2": 1, "b1": 1}
    assert backlog.take(q, "a2").line == 1  # a taken entry's stored meta holds no line
