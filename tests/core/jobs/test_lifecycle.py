"""The job lifecycle against both JobStore adapters (in-memory and a real redis-server)."""

import threading
import time
import uuid

import pytest

from core.errors import InputError
from core.jobs import lifecycle
from core.jobs.execute import Artifact, RunResult, execute_job
from core.jobs.store import MemoryJobStore
from core.schemas import JobStatus, JobType
from core.storage import LocalStorage
from tests.conftest import wait_for


class ListQueue:
    def __init__(self):
        self.items = []

    def enqueue(self, job_id, queue):
        self.items.append((job_id, queue))

    def ping(self):
        return True


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        yield MemoryJobStore()
    else:
        from core.jobs.redis_store import RedisJobStore

        url = request.getfixturevalue("redis_server")
        s = RedisJobStore(url)
        yield s
        s.close()


def _job(tenant=None):
    return lifecycle.new_job(JobType.txt2img, {"model": "digits", "seed": 1}, tenant or f"t-{uuid.uuid4().hex[:6]}")


def test_submit_claim_progress_finish(store):
    q = ListQueue()
    job, created = lifecycle.submit(store, q, _job())
    assert created and q.items == [(job.id, "inference")]
    assert job.id in store.ids_with_status(JobStatus.queued)
    claimed = lifecycle.claim(store, job.id, "w1", 10)
    assert claimed.status == JobStatus.running and claimed.attempts == 1 and store.lease_alive(job.id)
    assert lifecycle.claim(store, job.id, "w2", 10) is None  # only one worker wins
    assert job.id in store.ids_with_status(JobStatus.running) and job.id not in store.ids_with_status(JobStatus.queued)
    assert lifecycle.report_progress(store, job.id, 1, 2) is False
    done = lifecycle.finish(store, job.id, JobStatus.succeeded)
    assert done.status == JobStatus.succeeded and not store.lease_alive(job.id)
    assert lifecycle.finish(store, job.id, JobStatus.failed) is None  # the first finish wins
    assert [e["event"] for e in store.events(job.id)] == ["status", "status", "progress", "status"]
    assert job.id not in store.ids_with_status(JobStatus.running)


def test_idempotency(store):
    q = ListQueue()
    j = _job("acme-" + uuid.uuid4().hex[:4])
    a, c1 = lifecycle.submit(store, q, j, ("k1", "h1"))
    b, c2 = lifecycle.submit(store, q, _job(j.tenant), ("k1", "h1"))
    assert c1 and not c2 and a.id == b.id and len(q.items) == 1
    with pytest.raises(InputError) as e:
        lifecycle.submit(store, q, _job(j.tenant), ("k1", "other-body"))
    assert e.value.status == 409


def test_cancel_queued_and_running(store):
    q = ListQueue()
    a, _ = lifecycle.submit(store, q, _job())
    assert lifecycle.cancel(store, a.id).status == JobStatus.canceled
    assert lifecycle.claim(store, a.id, "w", 10) is None  # a canceled queued job never starts
    b, _ = lifecycle.submit(store, q, _job())
    lifecycle.claim(store, b.id, "w", 10)
    assert lifecycle.cancel(store, b.id).cancel_requested
    assert lifecycle.report_progress(store, b.id, 1, 10) is True  # the runner sees it at its next step


def test_reaper_requeues_a_job_whose_lease_expired(store):
    q = ListQueue()
    job, _ = lifecycle.submit(store, q, _job())
    lifecycle.claim(store, job.id, "dead-worker", 0.2)
    assert lifecycle.requeue_orphans(store, q, max_attempts=2) == []  # lease still alive
    wait_for(lambda: not store.lease_alive(job.id), 5, what="lease expiry")
    assert lifecycle.requeue_orphans(store, q, max_attempts=2) == [job.id]
    assert store.get(job.id).status == JobStatus.queued and q.items[-1] == (job.id, "inference")
    lifecycle.claim(store, job.id, "dead-again", 0.05)
    wait_for(lambda: not store.lease_alive(job.id), 5, what="lease expiry")
    assert lifecycle.requeue_orphans(store, q, max_attempts=2) == []
    failed = store.get(job.id)
    assert failed.status == JobStatus.failed and failed.error.code == "worker_lost"


def test_list_newest_first(store):
    q = ListQueue()
    tenant = "lister-" + uuid.uuid4().hex[:6]
    ids = [lifecycle.submit(store, q, _job(tenant))[0].id for _ in range(3)]
    assert [j.id for j in store.list(tenant, 2, 0)] == ids[::-1][:2]
    assert [j.id for j in store.list(tenant, 10, 2)] == [ids[0]]
    assert store.list("nobody", 10, 0) == []


def test_wait_events_wakes_on_new_event(store):
    q = ListQueue()
    job, _ = lifecycle.submit(store, q, _job())
    n = len(store.events(job.id))
    threading.Timer(0.2, lambda: store.add_event(job.id, "progress", {"step": 1})).start()
    t0 = time.monotonic()
    assert store.wait_events(job.id, n, 10)
    assert time.monotonic() - t0 < 5
    assert store.wait_events(job.id, n + 1, 0.1) is False


def test_rate_limit_and_metrics(store):
    key = "rl-" + uuid.uuid4().hex
    assert store.rate_limit(key, 2, 60) is None and store.rate_limit(key, 2, 60) is None
    assert 0 < store.rate_limit(key, 2, 60) <= 60
    name = "test_metric_" + uuid.uuid4().hex[:6]
    store.observe(name, {"type": "x"}, 0.3, (0.1, 0.5, 1.0))
    store.incr(name + "_total", {"type": "x"}, 2)
    counters, hists = store.metrics_snapshot()
    assert counters[(name + "_total", (("type", "x"),))] == 2
    h = hists[(name, (("type", "x"),))]
    assert h["buckets"] == {0.1: 0, 0.5: 1, 1.0: 1} and h["count"] == 1


def test_execute_job_writes_outputs_and_record_and_is_idempotent(store, tmp_path):
    storage = LocalStorage(tmp_path, "k")
    q = ListQueue()

    class FakeRunner:
        def run(self, job, ctx):
            for i in range(3):
                ctx.progress(i + 1, 3)
            return RunResult([Artifact(b"png-bytes", "image/png", "png", {"width": 1, "height": 1, "seed": 1})], 1.0, 2.0)

    job, _ = lifecycle.submit(store, q, _job())
    done = execute_job(job.id, store, storage, lambda: FakeRunner(), "w")
    assert done.status == JobStatus.succeeded and done.output[0].key == f"jobs/{job.id}/0.png"
    assert storage.get(f"jobs/{job.id}/0.png") == b"png-bytes" and storage.exists(f"jobs/{job.id}/job.json")
    assert done.metrics.inference_ms == 2.0 and done.progress.step == 3
    assert execute_job(job.id, store, storage, lambda: FakeRunner(), "w2") is None  # a redelivery does nothing


def test_execute_job_records_failures_and_cancel(store, tmp_path):
    storage = LocalStorage(tmp_path, "k")
    q = ListQueue()

    class Boom:
        def run(self, job, ctx):
            raise RuntimeError("kaput")

    job, _ = lifecycle.submit(store, q, _job())
    done = execute_job(job.id, store, storage, lambda: Boom(), "w")
    assert done.status == JobStatus.failed and done.error.code == "internal_error" and "kaput" in done.error.message

    class Cancels:
        def run(self, job, ctx):
            lifecycle.cancel(store, job.id)
            ctx.progress(1, 5)
            raise AssertionError("progress should have raised JobCancelled")

    job, _ = lifecycle.submit(store, q, _job())
    assert execute_job(job.id, store, storage, lambda: Cancels(), "w").status == JobStatus.canceled
