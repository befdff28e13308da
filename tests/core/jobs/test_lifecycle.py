"""The job lifecycle against both JobStore adapters (in-memory and a real redis-server)."""

import threading
import time
import uuid

import pytest

from core.contract import Artifact, RunResult
from core.errors import Conflict, LeaseLost, QuotaExceeded, Unavailable
from core.jobs import lifecycle
from core.jobs.execute import execute_job
from core.jobs.records import records
from core.jobs.store import memory_store
from core.schemas import JobStatus, JobType, ModelRef
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
        yield memory_store()
    else:
        from core.jobs.redis_store import redis_store

        url = request.getfixturevalue("redis_server")
        s = redis_store(url)
        yield s
        s.close()


def _job(tenant=None):
    return lifecycle.new_job(JobType.txt2img, {"model": "digits", "seed": 1}, tenant or f"t-{uuid.uuid4().hex[:6]}")


def test_submit_claim_progress_finish(store):
    q = ListQueue()
    job, created = lifecycle.submit(store, q, _job())
    assert created and q.items == [(job.id, "inference")]
    assert job.id in store.jobs.ids_with_status(JobStatus.queued)
    claimed = lifecycle.claim(store, job.id, "w1", 10)
    assert claimed.status == JobStatus.running and claimed.attempts == 1 and store.leases.lease_alive(job.id)
    assert lifecycle.claim(store, job.id, "w2", 10) is None  # only one worker wins
    assert job.id in store.jobs.ids_with_status(JobStatus.running) and job.id not in store.jobs.ids_with_status(
        JobStatus.queued
    )
    token = claimed.lease_token
    assert lifecycle.report_progress(store, job.id, token, 1, 2) is False
    done = lifecycle.finish(store, job.id, token, JobStatus.succeeded)
    assert done.status == JobStatus.succeeded and not store.leases.lease_alive(job.id)
    assert lifecycle.finish(store, job.id, token, JobStatus.failed) is None  # the first finish wins
    assert [e["event"] for e in store.events.events(job.id)] == ["status", "status", "progress", "status"]
    assert job.id not in store.jobs.ids_with_status(JobStatus.running)


def test_idempotency(store):
    q = ListQueue()
    j = _job("acme-" + uuid.uuid4().hex[:4])
    a, c1 = lifecycle.submit(store, q, j, ("k1", "h1"))
    b, c2 = lifecycle.submit(store, q, _job(j.tenant), ("k1", "h1"))
    assert c1 and not c2 and a.id == b.id and len(q.items) == 1
    with pytest.raises(Conflict) as e:
        lifecycle.submit(store, q, _job(j.tenant), ("k1", "other-body"))
    assert e.value.field == "Idempotency-Key"


def test_cancel_queued_and_running(store):
    q = ListQueue()
    a, _ = lifecycle.submit(store, q, _job())
    assert lifecycle.cancel(store, a.id).status == JobStatus.canceled
    assert lifecycle.claim(store, a.id, "w", 10) is None  # a canceled queued job never starts
    b, _ = lifecycle.submit(store, q, _job())
    token = lifecycle.claim(store, b.id, "w", 10).lease_token
    assert lifecycle.cancel(store, b.id).cancel_requested
    assert lifecycle.report_progress(store, b.id, token, 1, 10) is True  # the runner sees it at its next step


def test_reaper_requeues_a_job_whose_lease_expired(store):
    q = ListQueue()
    job, _ = lifecycle.submit(store, q, _job())
    lifecycle.claim(store, job.id, "dead-worker", 0.2)
    assert lifecycle.requeue_orphans(store, q, max_attempts=2) == []  # lease still alive
    wait_for(lambda: not store.leases.lease_alive(job.id), 5, what="lease expiry")
    assert lifecycle.requeue_orphans(store, q, max_attempts=2) == [job.id]
    assert store.jobs.get(job.id).status == JobStatus.queued and q.items[-1] == (job.id, "inference")
    lifecycle.claim(store, job.id, "dead-again", 0.05)
    wait_for(lambda: not store.leases.lease_alive(job.id), 5, what="lease expiry")
    assert lifecycle.requeue_orphans(store, q, max_attempts=2) == []
    failed = store.jobs.get(job.id)
    assert failed.status == JobStatus.failed and failed.error.code == "worker_lost"


def test_list_newest_first(store):
    q = ListQueue()
    tenant = "lister-" + uuid.uuid4().hex[:6]
    ids = [lifecycle.submit(store, q, _job(tenant))[0].id for _ in range(3)]
    assert [j.id for j in store.jobs.list(tenant, 2, 0)] == ids[::-1][:2]
    assert [j.id for j in store.jobs.list(tenant, 10, 2)] == [ids[0]]
    assert store.jobs.list("nobody", 10, 0) == []


def test_wait_events_wakes_on_new_event(store):
    q = ListQueue()
    job, _ = lifecycle.submit(store, q, _job())
    n = len(store.events.events(job.id))
    threading.Timer(0.2, lambda: store.events.add_event(job.id, "progress", {"step": 1})).start()
    t0 = time.monotonic()
    assert store.events.wait_events(job.id, n, 10)
    assert time.monotonic() - t0 < 5
    assert store.events.wait_events(job.id, n + 1, 0.1) is False


def test_rate_limit_and_metrics(store):
    key = "rl-" + uuid.uuid4().hex
    assert store.limits.rate_limit(key, 2, 60) is None and store.limits.rate_limit(key, 2, 60) is None
    assert 0 < store.limits.rate_limit(key, 2, 60) <= 60
    name = "test_metric_" + uuid.uuid4().hex[:6]
    store.limits.observe(name, {"type": "x"}, 0.3, (0.1, 0.5, 1.0))
    store.limits.incr(name + "_total", {"type": "x"}, 2)
    counters, hists = store.limits.metrics_snapshot()
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
            return RunResult(
                [Artifact(b"png-bytes", "image/png", "png", {"width": 1, "height": 1, "seed": 1})], 1.0, 2.0
            )

    job, _ = lifecycle.submit(store, q, _job())
    done = execute_job(job.id, store, storage, lambda: FakeRunner(), "w")
    assert done.status == JobStatus.succeeded and done.output[0].key == f"jobs/{job.id}/0.png"
    assert records.flush()  # the record is written on the writer's thread
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
    assert done.status == JobStatus.failed and done.error.code == "internal_error"
    assert "kaput" not in done.error.message and job.id in done.error.message  # no internals, the id to look up

    class Cancels:
        def run(self, job, ctx):
            lifecycle.cancel(store, job.id)
            ctx.progress(1, 5)
            raise AssertionError("progress should have raised JobCancelled")

    job, _ = lifecycle.submit(store, q, _job())
    assert execute_job(job.id, store, storage, lambda: Cancels(), "w").status == JobStatus.canceled


def test_a_worker_that_lost_its_lease_writes_nothing(store):
    """Frozen past its lease: the reaper hands the job on; the old owner can neither report, renew, cancel nor
    finish it, and the new owner's attempt is the one that counts."""
    q = ListQueue()
    job, _ = lifecycle.submit(store, q, _job())
    old = lifecycle.claim(store, job.id, "frozen", 0.2).lease_token
    wait_for(lambda: not store.leases.lease_alive(job.id), 5, what="lease expiry")
    assert lifecycle.requeue_orphans(store, q, max_attempts=3) == [job.id]
    new = lifecycle.claim(store, job.id, "fresh", 10).lease_token
    assert new != old
    with pytest.raises(LeaseLost):
        lifecycle.report_progress(store, job.id, old, 5, 10)
    assert store.leases.renew_lease(job.id, old, 10) is False and store.leases.renew_lease(job.id, new, 10) is True
    assert lifecycle.finish(store, job.id, old, JobStatus.canceled) is None
    assert lifecycle.finish(store, job.id, old, JobStatus.failed) is None
    assert store.jobs.get(job.id).status == JobStatus.running and store.jobs.get(job.id).lease_token == new
    assert lifecycle.finish(store, job.id, new, JobStatus.succeeded).status == JobStatus.succeeded
    statuses = [e["data"]["status"] for e in store.events.events(job.id) if e["event"] == "status"]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]


def test_claim_writes_the_lease_with_the_record(store):
    q = ListQueue()
    job, _ = lifecycle.submit(store, q, _job())
    claimed = lifecycle.claim(store, job.id, "w", 10)
    assert claimed.lease_token and store.leases.lease_alive(job.id)
    assert store.leases.renew_lease(job.id, claimed.lease_token, 10)


def test_idempotency_under_concurrency(store):
    """30 threads POST one key at once: one job, every caller gets its id."""
    q = ListQueue()
    tenant = "idem-" + uuid.uuid4().hex[:6]
    results, barrier = [], threading.Barrier(30)

    def post():
        barrier.wait()
        results.append(lifecycle.submit(store, q, _job(tenant), ("same-key", "h"))[0].id)

    threads = [threading.Thread(target=post) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 30 and len(set(results)) == 1
    assert len(q.items) == 1 and len(store.jobs.list(tenant, 100, 0)) == 1


def test_active_job_quota_per_tenant(store):
    q = ListQueue()
    tenant, other = "busy-" + uuid.uuid4().hex[:6], "calm-" + uuid.uuid4().hex[:6]
    jobs = [lifecycle.submit(store, q, _job(tenant), max_active=2)[0] for _ in range(2)]
    with pytest.raises(QuotaExceeded) as e:
        lifecycle.submit(store, q, _job(tenant), max_active=2)
    assert e.value.retry_after > 0
    assert lifecycle.submit(store, q, _job(other), max_active=2)[1]  # other tenants unaffected
    lifecycle.cancel(store, jobs[0].id)  # a terminal job frees its slot
    assert store.jobs.active_count(tenant) == 1
    assert lifecycle.submit(store, q, _job(tenant), max_active=2)[1]


class BrokenQueue(ListQueue):
    def enqueue(self, job_id, queue):
        raise ConnectionError("broker down")


def test_submit_is_all_or_nothing(store):
    """The broker refuses: 503 for the client, the job is not left queued, and a retry with the same key makes a
    new job instead of returning the dead one."""
    tenant = "enq-" + uuid.uuid4().hex[:6]
    with pytest.raises(Unavailable):
        lifecycle.submit(store, BrokenQueue(), _job(tenant), ("retry-me", "h"))
    [dead] = store.jobs.list(tenant, 10, 0)
    assert dead.status == JobStatus.failed and dead.error.code == "unavailable"
    assert dead.id not in store.jobs.ids_with_status(JobStatus.queued)
    q = ListQueue()
    job, created = lifecycle.submit(store, q, _job(tenant), ("retry-me", "h"))
    assert created and job.id != dead.id and q.items == [(job.id, "inference")]
    assert store.jobs.get(job.id).enqueued


def test_reaper_sends_jobs_that_never_reached_the_queue(store):
    q = ListQueue()
    job = _job()
    store.jobs.create(job)  # as if the gateway died between create and enqueue
    assert lifecycle.requeue_orphans(store, q, 3, enqueue_grace_s=60) == []
    assert lifecycle.requeue_orphans(store, q, 3, enqueue_grace_s=0) == [job.id]
    assert q.items == [(job.id, "inference")] and store.jobs.get(job.id).enqueued
    assert lifecycle.requeue_orphans(store, q, 3, enqueue_grace_s=0) == []  # sent once


def test_retention_deletes_records_events_outputs_and_uploads(store, tmp_path):
    from core import uploads
    from tests.api.helpers import png_bytes

    storage = LocalStorage(tmp_path, "k")
    q = ListQueue()
    tenant = "ret-" + uuid.uuid4().hex[:6]
    info = uploads.save(store.retention, storage, tenant, png_bytes(), uploads.describe(png_bytes(), "file", 10**6), 60)
    job, _ = lifecycle.submit(store, q, _job(tenant))
    done = execute_job(job.id, store, storage, lambda: OneImage(), "w")
    assert storage.exists(done.output[0].key) and records.flush()
    assert lifecycle.sweep_expired(store, storage, at=time.time() + 30) == []  # nothing due yet
    swept = lifecycle.sweep_expired(store, storage, at=time.time() + store.job_ttl_s + 61)
    assert f"job:{job.id}" in swept and f"upload:{tenant}/{info['id']}" in swept
    assert store.jobs.get(job.id) is None and store.events.events(job.id) == [] and store.jobs.list(tenant, 10, 0) == []
    assert not storage.exists(done.output[0].key) and not storage.exists(f"jobs/{job.id}/job.json")
    assert not storage.exists(f"uploads/{tenant}/{info['id']}")


class OneImage:
    def run(self, job, ctx):
        ctx.progress(1, 1)
        return RunResult([Artifact(b"png-bytes", "image/png", "png", {"width": 1, "height": 1, "seed": 1})], 1.0, 2.0)


class FlakyStorage(LocalStorage):
    """Local storage whose puts fail while ``down`` (or the first ``fail_first`` times)."""

    def __init__(self, root, fail_first=0, down=False, budget=0.5):
        super().__init__(root, "k", retry_budget_s=budget)
        self.fail_first, self.down, self.calls = fail_first, down, 0

    def put(self, key, data, content_type):
        from core.storage import with_retries

        def op():
            self.calls += 1
            if self.down or self.calls <= self.fail_first:
                raise ConnectionError("s3 at http://10.0.0.7:9000 refused")
            LocalStorage.put(self, key, data, content_type)

        with_retries(op, self.retry_budget_s, lambda e: isinstance(e, ConnectionError), "put")


def test_storage_outage_fails_the_job_cleanly(store, tmp_path):
    """Writes retry for the budget, then the job fails storage_unavailable with no host in the message, and none
    of its outputs stay behind."""
    q = ListQueue()

    class TwoImages:
        def run(self, job, ctx):
            return RunResult([Artifact(b"a", "image/png", "png"), Artifact(b"b", "image/png", "png")], 1.0, 1.0)

    class DiesAfterFirst(FlakyStorage):
        def put(self, key, data, content_type):
            self.down = key.endswith("1.png")
            super().put(key, data, content_type)

    storage = DiesAfterFirst(tmp_path)
    job, _ = lifecycle.submit(store, q, _job())
    t0 = time.monotonic()
    done = execute_job(job.id, store, storage, lambda: TwoImages(), "w")
    assert done.status == JobStatus.failed and done.error.code == "storage_unavailable"
    assert "10.0.0.7" not in done.error.message and time.monotonic() - t0 < 10
    assert done.output == [] and not storage.exists(f"jobs/{job.id}/0.png")


def test_storage_blip_is_retried(store, tmp_path):
    q = ListQueue()
    storage = FlakyStorage(tmp_path, fail_first=2, budget=10)
    job, _ = lifecycle.submit(store, q, _job())
    done = execute_job(job.id, store, storage, lambda: OneImage(), "w")
    assert done.status == JobStatus.succeeded and storage.get(done.output[0].key) == b"png-bytes"


def test_checkpoint_failure_is_not_fatal(store, tmp_path):
    q = ListQueue()
    storage = FlakyStorage(tmp_path, down=True, budget=0.2)

    class Trains:
        def run(self, job, ctx):
            assert ctx.save_checkpoint("state.pt", b"state") is False  # skipped, the run goes on
            storage.down = False
            assert ctx.save_checkpoint("state.pt", b"state") is True
            return OneImage().run(job, ctx)

    job, _ = lifecycle.submit(store, q, _job())
    assert execute_job(job.id, store, storage, lambda: Trains(), "w").status == JobStatus.succeeded


def test_deadline_exceeded(store, tmp_path):
    q = ListQueue()
    job = lifecycle.new_job(JobType.txt2img, {"model": "digits", "seed": 1, "timeout_s": 1}, "t")
    lifecycle.submit(store, q, job)

    class Slow:
        def run(self, job, ctx):
            for i in range(100):
                time.sleep(0.05)
                ctx.progress(i, 100)
            raise AssertionError("should have stopped at its deadline")

    done = execute_job(job.id, store, LocalStorage(tmp_path, "k"), lambda: Slow(), "w")
    assert done.status == JobStatus.failed and done.error.code == "deadline_exceeded"
    assert done.progress.step < 40


def test_a_worker_that_lost_its_job_writes_no_outputs_or_checkpoints(store, tmp_path):
    """The job moves on while the runner computes: no checkpoint, no output, no finish from the old attempt."""
    storage = LocalStorage(tmp_path, "k")
    q = ListQueue()
    job, _ = lifecycle.submit(store, q, _job())

    class LosesItMidway:
        def run(self, job, ctx):
            # what the reaper does after a freeze: the job is queued again and another worker owns it
            store.jobs.update(job.id, lambda j: j.model_copy(update={"lease_token": "someone-else"}))
            ctx.save_checkpoint("state.pt", b"state")
            raise AssertionError("the checkpoint of a non-owner must raise LeaseLost")

    result = execute_job(job.id, store, storage, lambda: LosesItMidway(), "old")
    assert result.status == JobStatus.running and result.lease_token == "someone-else"
    assert not storage.exists(f"jobs/{job.id}/state.pt") and not storage.exists(f"jobs/{job.id}/job.json")

    job2, _ = lifecycle.submit(store, q, _job())

    class LosesItAtTheEnd:
        def run(self, job, ctx):
            store.jobs.update(job.id, lambda j: j.model_copy(update={"lease_token": "someone-else"}))
            return RunResult([Artifact(b"png-bytes", "image/png", "png")], 1.0, 2.0)

    result = execute_job(job2.id, store, storage, lambda: LosesItAtTheEnd(), "old")
    assert result.status == JobStatus.running
    assert not storage.exists(f"jobs/{job2.id}/0.png") and not storage.exists(f"jobs/{job2.id}/job.json")


def test_progress_between_record_writes_is_an_event_and_a_cancel_check(store):
    """A step's progress is always an event; the record is rewritten only when asked (the worker asks at the first
    and last steps and every PROGRESS_RECORD_S): one read instead of a rewrite per step."""
    q = ListQueue()
    job, _ = lifecycle.submit(store, q, _job())
    token = lifecycle.claim(store, job.id, "w", 10).lease_token
    assert lifecycle.report_progress(store, job.id, token, 1, 10) is False
    assert lifecycle.report_progress(store, job.id, token, 2, 10, record=False) is False
    assert store.jobs.get(job.id).progress.step == 1  # the record keeps the last written step
    assert [e["data"]["step"] for e in store.events.events(job.id) if e["event"] == "progress"] == [1, 2]
    lifecycle.cancel(store, job.id)
    assert lifecycle.report_progress(store, job.id, token, 3, 10, record=False) is True  # cancel seen at once
    with pytest.raises(LeaseLost):
        lifecycle.report_progress(store, job.id, "not-the-owner", 4, 10, record=False)
    assert [e["data"]["step"] for e in store.events.events(job.id) if e["event"] == "progress"] == [1, 2, 3]


def test_a_pick_says_whether_anything_else_waits_for_the_model(store):
    """A pick is ``alone`` when no other job waits for its model in the backlog (any tenant, any priority): then a
    worker does not look for batch company. A second job for the model, from another tenant, makes it not alone;
    a job for another model does not."""
    q, name = ListQueue(), f"q-{uuid.uuid4().hex[:8]}"  # a backlog of this test's own on the shared server

    def submit(tenant, model):
        job = lifecycle.new_job(JobType.txt2img, {"prompt": "x"}, tenant, ModelRef(id=model), queue=name)
        return lifecycle.submit(store, q, job)[0]

    first = submit("acme", "digits")
    assert lifecycle.next_job(store, name) == (first.id, True)
    submit("acme", "mnist")
    assert lifecycle.next_job(store, name) == (first.id, True)
    submit("globex", "digits")
    assert lifecycle.next_job(store, name) == (first.id, False)


def test_an_output_written_right_after_a_progress_report_trusts_that_report(store, monkeypatch, tmp_path):
    """A progress report that found the job ours stands for the ownership read before an output or checkpoint write
    for ``OWNED_FRESH_S``, while the lease is known to live longer than that (a 1-step job writes its outputs right
    after its one report: one round trip less); past either, the store is read, and a job no longer ours is refused
    (LeaseLost). A registration always reads."""
    from core.jobs import context
    from core.jobs.context import JobContext

    job, _ = lifecycle.submit(store, ListQueue(), _job())
    claimed = lifecycle.claim(store, job.id, "w", 10)
    ctx = JobContext(store, claimed, LocalStorage(tmp_path, "k" * 32), leased_until=lambda: time.monotonic() + 10)
    reads = []
    owns = lifecycle.owns
    monkeypatch.setattr(lifecycle, "owns", lambda *a: reads.append(a) or owns(*a))
    ctx.progress(1, 1)
    ctx._owned()
    assert reads == []
    ctx._owned(recent_report=False)  # what register() asks
    assert len(reads) == 1
    assert lifecycle.finish(store, job.id, claimed.lease_token, JobStatus.failed) is not None  # no longer running
    monkeypatch.setattr(context, "OWNED_FRESH_S", 0.0)
    with pytest.raises(LeaseLost):
        ctx.save_checkpoint("state.pt", b"x")
    assert len(reads) == 2


def test_a_report_made_after_the_lease_expired_does_not_stand_for_the_read(store, tmp_path):
    """A worker stalled past its lease reports progress before the reaper ran (the record still names it), then the
    reaper hands the job on: its output write must still be refused. The report is trusted only while the lease is
    known to live (the heartbeat's last renewal, or the claim's), so here the store is read."""
    from core.jobs.context import JobContext

    q = ListQueue()
    job, _ = lifecycle.submit(store, q, _job())
    claimed_at = time.monotonic()
    old = lifecycle.claim(store, job.id, "stalled", 0.2)
    ctx = JobContext(store, old, LocalStorage(tmp_path, "k" * 32), leased_until=lambda: claimed_at + 0.2)
    wait_for(lambda: not store.leases.lease_alive(job.id), 5, what="lease expiry")
    ctx.progress(1, 1)  # the record still names this worker: the report goes through
    assert lifecycle.requeue_orphans(store, q, max_attempts=3) == [job.id]
    assert lifecycle.claim(store, job.id, "fresh", 10) is not None
    with pytest.raises(LeaseLost):
        ctx._owned()


def test_a_claims_bookkeeping_runs_beside_the_job_and_is_done_before_it_finishes(store, monkeypatch, tmp_path):
    """On a remote store the claim's bookkeeping (the backlog's take, the inputs' retention, the start webhook, the
    wait metric: one round trip) is off the job's way to the device: here it is held until the job runs, and the
    job still finishes after it (its start webhook before its end), with the backlog entry taken and the wait
    counted."""
    monkeypatch.setattr(store.backend, "remote", True)  # the memory store takes the remote path too
    name = f"q-{uuid.uuid4().hex[:8]}"
    order, ran = [], threading.Event()
    started = lifecycle._started

    def held(s, job):
        ran.wait(10)
        order.append("bookkeeping")
        started(s, job)

    monkeypatch.setattr(lifecycle, "_started", held)

    class Runner:
        def run(self, job, ctx):
            order.append("run")
            ran.set()
            return RunResult([Artifact(b"png-bytes", "image/png", "png", {"width": 1, "height": 1, "seed": 1})], 1, 2)

    def waits():
        _, hists = store.limits.metrics_snapshot()
        return hists.get(("diffuserve_job_wait_seconds", (("type", "txt2img"),)), {"count": 0})["count"]

    before = waits()
    job = lifecycle.new_job(JobType.txt2img, {"model": "digits"}, "acme", queue=name)
    lifecycle.submit(store, ListQueue(), job)
    assert [h.job_id for h in store.backlog.view(name)[0]] == [job.id]
    done = execute_job(job.id, store, LocalStorage(tmp_path, "k" * 32), lambda: Runner(), "w")
    assert done.status == JobStatus.succeeded
    assert order == ["run", "bookkeeping"]
    assert store.backlog.view(name)[0] == [] and waits() == before + 1

    # a job that wants its start webhook writes it with the claim: its progress deliveries cannot overtake it
    order.clear()
    monkeypatch.setattr(lifecycle, "_started", lambda s, j: (order.append("bookkeeping"), started(s, j)))
    hooked = lifecycle.new_job(
        JobType.txt2img,
        {"model": "digits", "webhook": "https://example.com/hook", "webhook_events_filter": ["start", "progress"]},
        "acme",
        queue=name,
    )
    lifecycle.submit(store, ListQueue(), hooked)
    done = execute_job(hooked.id, store, LocalStorage(tmp_path, "k" * 32), lambda: Runner(), "w")
    assert done.status == JobStatus.succeeded and order == ["bookkeeping", "run"]


def test_the_heartbeat_knows_until_when_the_lease_lives(store):
    """The claim's lease counts from before the claim was sent; each renewal that succeeds moves it on by the TTL
    from when it was sent; one refused (the job moved on) does not."""
    from core.jobs.heartbeat import Heartbeat

    job, _ = lifecycle.submit(store, ListQueue(), _job())
    t0 = time.monotonic()
    claimed = lifecycle.claim(store, job.id, "w", 1.0)
    lost = threading.Event()
    with Heartbeat(store, job.id, claimed.lease_token, 1.0, 0.05, lost.set).claimed_at(t0) as beat:
        assert beat.alive_until == t0 + 1.0
        wait_for(lambda: beat.alive_until > t0 + 1.05, 5, what="a renewal")
    with Heartbeat(store, job.id, "not-the-token", 1.0, 0.05, lost.set).claimed_at(t0) as stale:
        wait_for(lost.is_set, 5, what="the refused renewal")
        assert stale.alive_until == t0 + 1.0
