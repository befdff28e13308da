"""Job transitions, written once against the JobStore interface: submit, claim, progress, finish, cancel, reap.

Every transition is one atomic ``store.update`` followed by an event in the job's log.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime, timezone
from typing import Any, Protocol

from core.jobs.store import JobStore
from core.schemas import JobErrorInfo, JobRecord, JobStatus, JobType, Metrics, ModelRef, OutputItem

log = logging.getLogger("diffuserve.jobs")

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200)


class Queue(Protocol):
    def enqueue(self, job_id: str, queue: str) -> None: ...

    def ping(self) -> bool: ...


def now() -> datetime:
    return datetime.now(timezone.utc)


def new_job(job_type: JobType, input: dict[str, Any], tenant: str, model: ModelRef | None = None) -> JobRecord:
    return JobRecord(
        id=f"job_{uuid.uuid4().hex}",
        type=job_type,
        status=JobStatus.queued,
        created_at=now(),
        input=input,
        model=model,
        tenant=tenant,
    )


def status_event(job: JobRecord) -> dict:
    return {
        "id": job.id,
        "status": job.status.value,
        "attempts": job.attempts,
        "progress": job.progress.model_dump(),
        "error": job.error.model_dump() if job.error else None,
    }


def submit(store: JobStore, queue: Queue, job: JobRecord, idempotency: tuple[str, str] | None = None):
    """Create and enqueue; returns (job, created). A repeated Idempotency-Key returns the first job."""
    job, created = store.create(job, idempotency)
    if created:
        store.add_event(job.id, "status", status_event(job))
        store.incr("diffuserve_jobs_submitted_total", {"type": job.type.value})
        queue.enqueue(job.id, job.type.queue)
    return job, created


def claim(store: JobStore, job_id: str, worker: str, lease_ttl: float) -> JobRecord | None:
    """queued -> running for this worker; None when the job is gone, canceled, finished or taken."""
    claimed = False

    def fn(job: JobRecord) -> JobRecord | None:
        nonlocal claimed
        if job.status != JobStatus.queued:
            return None
        t = now()
        job.status = JobStatus.running
        job.started_at = t
        job.attempts += 1
        job.worker = worker
        job.metrics.queue_ms = round((t - job.created_at).total_seconds() * 1000, 3)
        claimed = True
        return job

    job = store.update(job_id, fn)
    if not claimed or job is None:
        return None
    store.set_lease(job_id, worker, lease_ttl)
    store.add_event(job_id, "status", status_event(job))
    store.observe("diffuserve_job_wait_seconds", {"type": job.type.value}, job.metrics.queue_ms / 1000, SECONDS_BUCKETS)
    return job


def report_progress(store: JobStore, job_id: str, step: int, total: int, **extra: float) -> bool:
    """Record progress (``extra``, e.g. a training loss, goes into the event); True when a cancel was requested."""

    def fn(job: JobRecord) -> JobRecord | None:
        if job.status != JobStatus.running:
            return None
        job.progress.step, job.progress.total = step, total
        return job

    job = store.update(job_id, fn)
    store.add_event(job_id, "progress", {"step": step, "total": total, **extra})
    return job is None or job.cancel_requested or job.status != JobStatus.running


def finish(
    store: JobStore,
    job_id: str,
    status: JobStatus,
    output: list[OutputItem] | None = None,
    error: JobErrorInfo | None = None,
    metrics: Metrics | None = None,
    model: ModelRef | None = None,
    versions: dict[str, str] | None = None,
) -> JobRecord | None:
    """running -> a terminal status. Only the first finish counts."""
    done = False

    def fn(job: JobRecord) -> JobRecord | None:
        nonlocal done
        if job.status.is_terminal():
            return None
        job.status = status
        job.finished_at = now()
        job.output = output or []
        job.error = error
        if metrics is not None:
            job.metrics = Metrics(**{**metrics.model_dump(exclude_none=True), "queue_ms": job.metrics.queue_ms})
        if model is not None:
            job.model = model
        if versions:
            job.versions = versions
        done = True
        return job

    job = store.update(job_id, fn)
    if not done or job is None:
        return None
    store.clear_lease(job_id)
    store.add_event(job_id, "status", status_event(job))
    _count_finished(store, job)
    return job


def _count_finished(store: JobStore, job: JobRecord) -> None:
    store.incr("diffuserve_jobs_finished_total", {"type": job.type.value, "status": job.status.value})
    if job.started_at and job.finished_at:
        run_s = (job.finished_at - job.started_at).total_seconds()
        store.observe("diffuserve_job_run_seconds", {"type": job.type.value}, run_s, SECONDS_BUCKETS)


def record_model_load(store: JobStore, model: str, load_ms: float) -> None:
    """Every cold model load, warm-ups at start included, feeds the model-load-time histogram."""
    store.observe("diffuserve_model_load_seconds", {"model": model}, load_ms / 1000, SECONDS_BUCKETS)


def cancel(store: JobStore, job_id: str) -> JobRecord | None:
    """A queued job is canceled at once and never starts; a running one is flagged and stops at its next step."""
    changed = None

    def fn(job: JobRecord) -> JobRecord | None:
        nonlocal changed
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

    job = store.update(job_id, fn)
    if job is not None and changed == "canceled":
        store.add_event(job_id, "status", status_event(job))
        _count_finished(store, job)
    elif job is not None and changed == "flagged":
        store.add_event(job_id, "cancel_requested", {"id": job_id})
    return job


def requeue_orphans(store: JobStore, queue: Queue, max_attempts: int) -> list[str]:
    """The reaper: a running job whose worker stopped heart-beating is queued again (or failed after
    ``max_attempts``). Redis' visibility timeout alone would redeliver it only after an hour, and
    claim() makes a late redelivery harmless."""
    requeued = []
    for job_id in store.ids_with_status(JobStatus.running):
        if store.lease_alive(job_id):
            continue
        outcome = None

        def fn(job: JobRecord) -> JobRecord | None:
            nonlocal outcome
            if job.status != JobStatus.running or store.lease_alive(job_id):
                return None
            if job.cancel_requested:
                job.status, outcome = JobStatus.canceled, "canceled"
                job.finished_at = now()
            elif job.attempts >= max_attempts:
                job.status, outcome = JobStatus.failed, "failed"
                job.finished_at = now()
                job.error = JobErrorInfo(code="worker_lost", message=f"the worker died {job.attempts} times running this job")
            else:
                job.status, outcome = JobStatus.queued, "queued"
                job.worker = None
                job.progress.step = 0
            return job

        job = store.update(job_id, fn)
        if job is None or outcome is None:
            continue
        store.add_event(job_id, "status", status_event(job))
        if outcome == "queued":
            log.warning("job %s lost its worker; queued again (attempt %d done)", job_id, job.attempts)
            queue.enqueue(job_id, job.type.queue)
            requeued.append(job_id)
        else:
            _count_finished(store, job)
    return requeued


def start_reaper(store: JobStore, queue: Queue, interval_s: float, max_attempts: int, stop: threading.Event) -> threading.Thread:
    """Run :func:`requeue_orphans` every ``interval_s`` in a daemon thread until ``stop`` is set. Every gateway and
    worker runs one; a short lock in the store lets one of them do each pass."""

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                if store.try_lock("reaper", interval_s * 0.9):
                    requeue_orphans(store, queue, max_attempts)
            except Exception:  # noqa: BLE001 - the reaper must outlive a Redis blip
                log.warning("reaper pass failed", exc_info=True)

    t = threading.Thread(target=loop, name="reaper", daemon=True)
    t.start()
    return t
