"""Job transitions, written once against the JobStore interface: submit, claim, progress, finish, cancel, reap.

Every transition is one atomic ``store.jobs.update`` that also appends the job's event (one round trip in
distributed mode); its bookkeeping (backlog, counters, histograms, webhook deliveries) follows in one ``store.batch``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any, Protocol

from core import webhooks
from core.errors import Conflict, LeaseLost, Unavailable
from core.jobs.schedule import LEVEL, Waiting, pick
from core.jobs.store import JobStore, Limits, Retention
from core.schemas import UPLOAD_ID_PATTERN, JobErrorInfo, JobRecord, JobStatus, JobType, Metrics, ModelRef, OutputItem
from core.storage import Storage, upload_key

log = logging.getLogger("diffuserve.jobs")

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200)


class Queue(Protocol):
    def enqueue(self, job_id: str, queue: str) -> None: ...

    def ping(self) -> bool: ...


def now() -> datetime:
    return datetime.now(UTC)


def waiting_of(job: JobRecord) -> Waiting:
    """A queued job as the scheduler sees it (``core/jobs/schedule.py``)."""
    return Waiting(
        job.id, job.tenant, LEVEL[job.options.priority], job.model.id if job.model else None, job.created_at.timestamp()
    )


def next_job(
    store: JobStore,
    queue_name: str,
    age_s: float = 300.0,
    exclude: Collection[str] = (),
    warm: frozenset[str] | set[str] = frozenset(),
    affinity_s: float = 0.0,
) -> tuple[str, bool] | None:
    """(the queued job a free worker of ``queue_name`` should run now, whether it is alone), by the scheduling rule
    (fair share between tenants within a priority level, priorities aged by ``age_s``, the models it holds ``warm``
    preferred unless the rule's pick waited ``affinity_s``); None when nothing waits. Alone: no other job waited in
    the backlog for its model when it was read (nothing to batch it with, so a worker need not look). An entry whose
    job is no longer queued (canceled, finished, expired) is dropped on the way."""
    wall = time.time()
    dropped: set[str] = set()
    while True:  # every stale entry met is dropped (one each), so this ends with the backlog
        heads, passes = store.backlog.view(queue_name)
        chosen = pick(
            heads, passes, wall, age_s, lambda w: w.job_id in exclude or w.job_id in dropped, warm, affinity_s
        )
        if chosen is None:
            return None
        job = store.jobs.get(chosen.job_id)
        if job is not None and job.status == JobStatus.queued:
            return chosen.job_id, sum(h.line for h in heads if h.model == chosen.model) <= 1
        # started by a worker whose own take has not run yet: whoever removes the entry charges the tenant once
        store.backlog.take(queue_name, chosen.job_id, charge=job is not None and job.started_at is not None)
        dropped.add(chosen.job_id)


def queued_for(store: JobStore, model: str, queues: tuple[str, ...] = ("inference", "training")) -> int:
    """Jobs waiting for ``model`` (what a worker weighs when one of its warm models must go)."""
    return sum(n for q in queues for (_, m), n in store.backlog.depth(q).items() if m == model)


def new_job(
    job_type: JobType,
    input: dict[str, Any],
    tenant: str,
    model: ModelRef | None = None,
    queue: str = "inference",
    weight: float = 1.0,
) -> JobRecord:
    """A queued job's record; ``input`` is its complete request as admission left it, ``queue`` its task's."""
    return JobRecord(
        id=f"job_{uuid.uuid4().hex}",
        type=job_type,
        status=JobStatus.queued,
        created_at=now(),
        input=input,
        model=model,
        tenant=tenant,
        queue=queue,
        weight=weight,
    )


def status_event(job: JobRecord) -> dict:
    return {
        "id": job.id,
        "status": job.status.value,
        "attempts": job.attempts,
        "progress": job.progress.model_dump(),
        "error": job.error.model_dump() if job.error else None,
    }


def _status(job: JobRecord) -> tuple[str, dict]:
    """A transition's event: the job's new status."""
    return "status", status_event(job)


def submit(
    store: JobStore,
    queue: Queue,
    job: JobRecord,
    idempotency: tuple[str, str] | None = None,
    max_active: int | None = None,
) -> tuple[JobRecord, bool]:
    """Create and enqueue, all or nothing; returns (job, created). A repeated Idempotency-Key returns the first job.

    When the queue refuses the message the job is failed (``unavailable``), its idempotency key released so that a
    retry makes a new job, and :class:`Unavailable` raised. When even that write fails (the store went down with the
    broker), the job stays ``queued`` with ``enqueued`` False and the reaper sends it once the store is back."""
    keep_inputs(store.retention, store.job_ttl_s, job)
    job, created, stored_hash = store.jobs.create(job, idempotency, max_active, event=("status", status_event(job)))
    if not created:
        if stored_hash != idempotency[1]:
            raise Conflict(
                "Idempotency-Key was already used with a different request body",
                field="Idempotency-Key",
                code="idempotency_conflict",
            )
        return job, False
    try:
        with store.batch():
            store.limits.incr("diffuserve_jobs_submitted_total", {"type": job.type.value})
            store.backlog.add(job.queue, waiting_of(job), job.weight)  # what the scheduler picks from
        queue.enqueue(job.id, job.queue)  # one message per job: it wakes a worker (and counts for autoscaling)
    except Exception as e:
        log.warning("could not enqueue %s: %s", job.id, type(e).__name__)
        try:
            finish(
                store,
                job.id,
                None,
                JobStatus.failed,
                error=JobErrorInfo(code="unavailable", message="the queue was unavailable; the job was not started"),
            )
            if idempotency:
                store.jobs.release_idempotency(job.tenant, idempotency[0], job.id)
            store.backlog.take(job.queue, job.id, charge=False)
        except Unavailable:
            pass  # the reaper sends it later (enqueued stays False)
        raise Unavailable("the job queue is unavailable; retry shortly", code="queue_unavailable") from e
    return store.jobs.update(job.id, _mark_enqueued) or job, True


def keep_inputs(retention: Retention, ttl_s: float, job: JobRecord) -> None:
    """The uploads a job reads (images, datasets) live at least as long as the job: each one's retention is pushed
    to a job TTL from now, at submit and again when an attempt starts (never made earlier)."""
    at = time.time() + ttl_s
    for value in job.input.values():
        if isinstance(value, str) and UPLOAD_ID_PATTERN.match(value):
            retention.extend_expiry(f"upload:{job.tenant}/{value}", at)


def _mark_enqueued(job: JobRecord) -> JobRecord | None:
    if job.enqueued:
        return None
    job.enqueued = True
    return job


def claim(
    store: JobStore,
    job_id: str,
    worker: str,
    lease_ttl: float,
    beside: Callable[[Callable[[], None]], None] | None = None,
) -> JobRecord | None:
    """queued -> running under a new owner token, with its lease, in one atomic step. None when the job is gone,
    canceled, finished or taken. The returned record's ``lease_token`` is what the worker reports with.

    The start's bookkeeping (the backlog entry taken, the inputs' retention, the wait metric) is handed to
    ``beside`` when given (run off the job's way to the device; the caller waits for it before the job finishes),
    else written here; so is it for a job that wants a start webhook (its progress deliveries come after it)."""
    claimed = False
    token = uuid.uuid4().hex

    def fn(job: JobRecord) -> JobRecord | None:
        nonlocal claimed
        claimed = False  # decided afresh on each call (another writer in between calls it again)
        if job.status != JobStatus.queued:
            return None
        t = now()
        job.status = JobStatus.running
        job.started_at = t
        job.attempts += 1
        job.worker = worker
        job.lease_token = token
        job.enqueued = True
        job.metrics.queue_ms = round((t - job.created_at).total_seconds() * 1000, 3)
        claimed = True
        return job

    job = store.jobs.update(job_id, fn, lease=(token, lease_ttl), event=_status)
    if not claimed or job is None:
        return None
    # a start webhook is written here (a job's progress deliveries must not overtake it): those jobs keep the round trip
    run = beside if beside is not None and not webhooks.wanted(job, "start") else _now
    run(lambda: _started(store, job))
    return job


def _now(fn: Callable[[], None]) -> None:
    fn()


def _started(store: JobStore, job: JobRecord) -> None:
    """A claimed job's bookkeeping, in one round trip."""
    try:
        with store.batch():
            store.backlog.take(job.queue, job.id)  # it leaves the backlog, its tenant's pass grows by 1 / weight
            keep_inputs(store.retention, store.job_ttl_s, job)  # the uploads it reads outlive this attempt
            webhooks.emit(store.webhooks, job, "start")
            store.limits.observe(
                "diffuserve_job_wait_seconds", {"type": job.type.value}, job.metrics.queue_ms / 1000, SECONDS_BUCKETS
            )
    except Unavailable:
        # the claim holds: the scheduler drops the backlog entry when it next meets it, the submit already kept the
        # uploads a TTL (retention may still win: input_expired)
        log.warning("job %s: its start's bookkeeping (backlog, retention, webhook, metrics) was not written", job.id)


def report_progress(
    store: JobStore, job_id: str, token: str, step: int, total: int, record: bool = True, **extra: float
) -> bool:
    """Record progress (``extra``, e.g. a training loss, goes into the event); True when a cancel was requested.
    Raises :class:`LeaseLost` when ``token`` no longer owns the job (nothing is written then).

    Every step is an event; ``record`` False leaves the record's ``progress`` as it is (one read instead of a
    rewrite: the caller rewrites it every so often, see ``JobContext.progress``)."""
    if not record:
        job = store.jobs.get(job_id)
        if job is None or job.status != JobStatus.running or job.lease_token != token:
            raise LeaseLost(f"job {job_id} is no longer ours")
        store.events.add_event(job_id, "progress", {"step": step, "total": total, **extra})
        return job.cancel_requested
    owned = False

    def fn(job: JobRecord) -> JobRecord | None:
        nonlocal owned
        owned = job.status == JobStatus.running and job.lease_token == token
        if not owned:
            return None
        job.progress.step, job.progress.total = step, total
        return job

    job = store.jobs.update(job_id, fn, event=lambda _: ("progress", {"step": step, "total": total, **extra}))
    if not owned or job is None:
        raise LeaseLost(f"job {job_id} is no longer ours")
    webhooks.emit(store.webhooks, job, "progress")  # as often as the record is written (every 0.5 s at most)
    return job.cancel_requested


def owns(store: JobStore, job_id: str, token: str) -> bool:
    job = store.jobs.get(job_id)
    return job is not None and job.status == JobStatus.running and job.lease_token == token


def finish(
    store: JobStore,
    job_id: str,
    token: str | None,
    status: JobStatus,
    output: list[OutputItem] | None = None,
    error: JobErrorInfo | None = None,
    metrics: Metrics | None = None,
    model: ModelRef | None = None,
    versions: dict[str, str] | None = None,
    account: Callable[[JobRecord], None] | None = None,
) -> JobRecord | None:
    """A job of ours -> a terminal status. Only the current lease owner (``token``; None: a job that never ran)
    finishes, and only once; anyone else gets None and changes nothing. ``account(job)`` (its usage) is written
    before the status event, so a client woken by it (a long-poll, then its next submit) finds the job's usage
    counted (a daily quota then refuses at once)."""
    done = False

    def fn(job: JobRecord) -> JobRecord | None:
        nonlocal done
        done = False
        if job.status.is_terminal() or job.lease_token != token:
            return None
        job.status = status
        job.finished_at = now()
        job.output = output or []
        job.error = error
        job.lease_token = None
        if metrics is not None:
            parts = {**metrics.model_dump(exclude_none=True), "queue_ms": job.metrics.queue_ms}
            total = round((job.finished_at - job.created_at).total_seconds() * 1000, 3)
            known = sum(v for k, v in parts.items() if v is not None and k not in ("other_ms", "total_ms", "device_ms"))
            job.metrics = Metrics(**parts, other_ms=round(max(0.0, total - known), 3), total_ms=total)
        if model is not None:
            job.model = model
        if versions:
            job.versions = versions
        done = True
        return job

    job = store.jobs.update(job_id, fn, lease=("", 0))
    if not done or job is None:
        return None
    with store.batch():  # one round trip (joins the caller's batch, if any), the event after the usage
        if account is not None:
            account(job)
        store.events.add_event(job_id, *_status(job))
        _count_finished(store.limits, job)
        if job.status == JobStatus.succeeded and job.output:
            webhooks.emit(store.webhooks, job, "output")
        webhooks.emit(store.webhooks, job, "completed")
    return job


def _count_finished(limits: Limits, job: JobRecord) -> None:
    limits.incr("diffuserve_jobs_finished_total", {"type": job.type.value, "status": job.status.value})
    if job.started_at and job.finished_at:
        run_s = (job.finished_at - job.started_at).total_seconds()
        limits.observe("diffuserve_job_run_seconds", {"type": job.type.value}, run_s, SECONDS_BUCKETS)


def record_model_load(limits: Limits, model: str, load_ms: float) -> None:
    """Every cold model load, warm-ups at start included, feeds the model-load-time histogram."""
    limits.observe("diffuserve_model_load_seconds", {"model": model}, load_ms / 1000, SECONDS_BUCKETS)


def cancel(store: JobStore, job_id: str) -> JobRecord | None:
    """A queued job is canceled at once and never starts; a running one is flagged and stops at its next step."""
    changed = None

    def fn(job: JobRecord) -> JobRecord | None:
        nonlocal changed
        changed = None
        if job.status == JobStatus.queued:
            job.status = JobStatus.canceled
            job.finished_at = now()
            changed = "canceled"
            return job
        if job.status == JobStatus.running and not job.cancel_requested:
            job.cancel_requested = True
            changed = "flagged"
            return job
        return None

    def event(job: JobRecord) -> tuple[str, dict]:
        return _status(job) if job.status == JobStatus.canceled else ("cancel_requested", {"id": job_id})

    job = store.jobs.update(job_id, fn, event=event)
    if job is not None and changed == "canceled":
        try:
            store.backlog.take(job.queue, job_id, charge=False)
        except Unavailable:  # the scheduler drops the entry when it next meets it
            log.warning("job %s: canceled, but not taken out of the backlog", job_id)
        with store.batch():
            _count_finished(store.limits, job)
            webhooks.emit(store.webhooks, job, "completed")
    return job


DEADLINE_GRACE_S = 30.0  # the worker enforces timeout_s at its steps; the reaper only catches a hung worker


def requeue_orphans(store: JobStore, queue: Queue, max_attempts: int, enqueue_grace_s: float = 30.0) -> list[str]:
    """The reaper. A running job whose worker stopped heart-beating is queued again (or failed ``worker_lost``
    after ``max_attempts``); one hung past its ``timeout_s`` fails ``deadline_exceeded``; a queued job whose message
    never reached the queue is sent again after ``enqueue_grace_s``. Either way the job gets a new (or no) owner
    token, so the worker that had it can write nothing more. Redis' visibility timeout alone would redeliver a lost
    message only after an hour, and claim() makes a late redelivery harmless."""
    wall = now()
    requeued = [
        job_id
        for job_id in store.jobs.ids_with_status(JobStatus.running)
        if _reap_running(store, queue, job_id, wall, max_attempts)
    ]
    return requeued + _resend_unsent(store, queue, wall, enqueue_grace_s)


def _reap_running(store: JobStore, queue: Queue, job_id: str, wall: datetime, max_attempts: int) -> bool:
    """Settle one running job whose worker may be gone (see ``_orphaned``); True when it was queued again."""
    changed = False

    def fn(job: JobRecord) -> JobRecord | None:
        nonlocal changed
        changed = job.status == JobStatus.running and _orphaned(
            job, wall, max_attempts, lambda: store.leases.lease_alive(job_id)
        )
        return job if changed else None

    job = store.jobs.update(job_id, fn, lease=("", 0), event=_status)
    if job is None or not changed:
        return False
    if job.status == JobStatus.queued:
        log.warning("job %s lost its worker; queued again (attempt %d done)", job_id, job.attempts)
        store.backlog.add(job.queue, waiting_of(job), job.weight)  # at its place: the time it was first queued
        queue.enqueue(job_id, job.queue)
        store.jobs.update(job_id, _mark_enqueued)
        return True
    _count_finished(store.limits, job)
    return False


def _orphaned(job: JobRecord, wall: datetime, max_attempts: int, lease_alive: Callable[[], bool]) -> bool:
    """A running job's fate, decided in place: failed past its deadline, else (when its lease is gone) canceled as
    asked, failed after ``max_attempts``, or queued again, its owner token dropped. False: left running."""
    timeout = job.options.timeout_s
    overdue = timeout and job.started_at and (wall - job.started_at).total_seconds() > timeout + DEADLINE_GRACE_S
    if overdue:
        job.status = JobStatus.failed
        job.error = JobErrorInfo(code="deadline_exceeded", message=f"the job ran past its timeout_s of {timeout}")
    elif lease_alive():
        return False
    elif job.cancel_requested:
        job.status = JobStatus.canceled
    elif job.attempts >= max_attempts:
        job.status = JobStatus.failed
        job.error = JobErrorInfo(code="worker_lost", message=f"the worker died {job.attempts} times running this job")
    else:
        job.status = JobStatus.queued
        job.worker = None
        job.progress.step = 0
        job.enqueued = False  # until its backlog entry and message are out again (else the reaper sends them)
    if job.status.is_terminal():
        job.finished_at = now()
    job.lease_token = None
    return True


def _resend_unsent(store: JobStore, queue: Queue, wall: datetime, enqueue_grace_s: float) -> list[str]:
    """Queued jobs whose message never reached the queue (older than ``enqueue_grace_s``), sent again."""
    sent = []
    for job_id in store.jobs.ids_with_status(JobStatus.queued):
        job = store.jobs.get(job_id)
        if job is None or job.enqueued or (wall - job.created_at).total_seconds() < enqueue_grace_s:
            continue
        log.warning("job %s never reached the queue; sending it now", job_id)
        store.backlog.add(job.queue, waiting_of(job), job.weight)
        queue.enqueue(job_id, job.queue)
        store.jobs.update(job_id, _mark_enqueued)
        sent.append(job_id)
    return sent


def sweep_expired(store: JobStore, storage: Storage, at: float | None = None, limit: int = 100) -> list[str]:
    """Retention: delete what is due, outputs and uploads from storage first, then the records. Returns what was
    deleted (``job:{id}``, ``upload:{tenant}/{id}``)."""
    done = []
    for member in store.retention.due_expiries(time.time() if at is None else at, limit):
        kind, _, ident = member.partition(":")
        if kind == "job":
            storage.delete_prefix(f"jobs/{ident}/")
            store.jobs.delete_job(ident)
        elif kind == "upload":
            tenant, _, upload_id = ident.partition("/")
            key = upload_key(tenant, upload_id)
            storage.delete(key)
            storage.delete(key + ".json")
        store.retention.forget_expiry(member)
        done.append(member)
    return done


def start_reaper(
    store: JobStore, queue: Queue, storage: Storage, interval_s: float, max_attempts: int, stop: threading.Event
) -> threading.Thread:
    """Run :func:`requeue_orphans` and :func:`sweep_expired` every ``interval_s`` in a daemon thread until ``stop``
    is set. Every gateway and worker runs one; a short lock in the store lets one of them do each pass."""

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                if store.limits.try_lock("reaper", interval_s * 0.9):
                    requeue_orphans(store, queue, max_attempts)
                    sweep_expired(store, storage)
            except Exception as e:  # noqa: BLE001 - the reaper must outlive a Redis or S3 blip
                log.warning("reaper pass failed: %s", type(e).__name__)

    t = threading.Thread(target=loop, name="reaper", daemon=True)
    t.start()
    return t
