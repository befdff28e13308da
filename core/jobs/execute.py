"""Running jobs, the same code for the Celery task and the embedded worker thread: claim them, keep their leases
alive (:mod:`core.jobs.heartbeat`), call the runner with a run context each (:mod:`core.jobs.context`), store outputs
under fixed keys, finish, write the record (:mod:`core.jobs.records`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol, runtime_checkable

from core.contract import RunResult
from core.errors import JobCancelled, LeaseLost, OutOfMemory, ServiceError, Unavailable
from core.jobs import lifecycle
from core.jobs.context import JobContext
from core.jobs.heartbeat import Heartbeat
from core.jobs.records import output_key, records
from core.jobs.store import JobStore, Limits
from core.jobs.usage import today as usage_today
from core.schemas import JobErrorInfo, JobRecord, JobStatus, Metrics, OutputItem
from core.storage import Storage

log = logging.getLogger("diffuserve.worker")


class JobRunner(Protocol):
    """Turns a job into a result (``core.runner.Engines``: typed request, executor table)."""

    def run(self, job: JobRecord, ctx: JobContext) -> RunResult: ...


@runtime_checkable
class BatchRunner(JobRunner, Protocol):
    """A runner that also groups jobs into shared denoising loops and keeps tenants' files in ``cache_dir``."""

    cache_dir: Path

    def group(
        self, jobs: list[JobRecord], context: Callable[[JobRecord], JobContext], max_batch: int | None = None
    ) -> list[list[JobRecord]]: ...

    def run_batch(self, jobs: list[JobRecord], ctxs: list[JobContext]) -> list[RunResult | BaseException]: ...


def _failure(e: BaseException, job_id: str) -> JobErrorInfo:
    """What a failed job tells its client: the error's code and message, never hosts, paths or tracebacks."""
    if isinstance(e, ServiceError):
        return JobErrorInfo(code=e.code, message=e.message)
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        oom = OutOfMemory()
        return JobErrorInfo(code=oom.code, message=oom.message)
    if isinstance(e, ValueError):  # core raises ValueError naming the bad value
        return JobErrorInfo(code="invalid_input", message=str(e).split("\n")[0][:500])
    return JobErrorInfo(
        code="internal_error", message=f"the job failed unexpectedly (job {job_id}); see the worker log"
    )


def execute_job(
    job_id: str,
    store: JobStore,
    storage: Storage,
    runner_factory: Callable[[], JobRunner],
    worker_id: str,
    lease_ttl: float = 15.0,
    heartbeat_interval: float = 3.0,
) -> JobRecord | None:
    """Run ``job_id`` if it is still queued. Returns the finished record, or None when there was nothing to do.

    Only the lease owner writes: a worker that lost its job (frozen past its lease, then woken) stops at its next
    step and neither finishes nor records anything. A failed or canceled job leaves no outputs behind."""
    return execute_batch([job_id], store, storage, runner_factory, worker_id, lease_ttl, heartbeat_interval)[0]


def take_turn(
    message_id: str,
    store: JobStore,
    attempt: Callable[[str, bool], JobRecord | None],
    age_s: float = 300.0,
    drain: int = 64,
    stop: threading.Event | None = None,
    warm: Callable[[], set[str]] = set,
    affinity_s: float = 0.0,
    queue: str | None = None,
) -> JobRecord | None:
    """What one queue message wakes a worker for: the queued job the scheduler picks now (fair share between tenants,
    priorities aged by ``age_s``, the worker's ``warm`` models preferred for ``affinity_s``; ``lifecycle.next_job``),
    run by ``attempt(job_id, alone)`` (``alone``: nothing else waited for its model; None: another worker claimed it
    first, so the next pick is tried); then, while jobs wait and up to ``drain`` in all, the next pick again. A job's
    message is what wakes a worker for it (and what autoscaling counts); which job runs is the rule's, and a worker
    never sleeps while the backlog holds a job whose message another turn used up. An empty backlog (an older record,
    the store away) runs the message's own job. ``queue``: the message's (else read from its job's record). Returns
    the first job run, or None."""
    queue = queue or _queue_of(store, message_id)
    tried: set[str] = set()
    first: JobRecord | None = None
    for _ in range(drain + 8):
        if stop is not None and stop.is_set():
            break
        try:
            found = lifecycle.next_job(store, queue, age_s, tried, warm=warm(), affinity_s=affinity_s)
        except Unavailable:
            found = None
        chosen, alone = found if found else (None, False)
        if chosen is None and message_id not in tried:  # a job with no backlog entry still runs on its message
            chosen = message_id
        if chosen is None:
            break
        tried.add(chosen)
        done = attempt(chosen, alone)
        if done is not None:
            first = first or done
            drain -= 1
            if drain <= 0:
                break
    return first


def _queue_of(store: JobStore, job_id: str) -> str:
    try:
        job = store.jobs.get(job_id)
    except Unavailable:
        job = None
    return job.queue if job else "inference"


BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def execute_batch(
    job_ids: list[str],
    store: JobStore,
    storage: Storage,
    runner_factory: Callable[[], JobRunner],
    worker_id: str,
    lease_ttl: float = 15.0,
    heartbeat_interval: float = 3.0,
) -> list[JobRecord | None]:
    """Run several queued jobs; those that can share a denoising loop (``runner.group``) run as one batch, the rest
    one by one. A job is claimed only when its group starts (until then it stays queued and cancelable as such);
    each keeps its own lease, progress, cancel, outputs and outcome. Returns a record (or None when there was
    nothing to do) per id, in order."""
    finals: dict[str, JobRecord | None] = {}
    groups = [list(job_ids)] if len(job_ids) == 1 else _group(job_ids, store, storage, runner_factory)
    for group in groups:  # claim filters out what is no longer queued
        finals.update(_run_group(group, store, storage, runner_factory, worker_id, lease_ttl, heartbeat_interval))
    return [finals.get(job_id) for job_id in job_ids]


def _group(
    job_ids: list[str], store: JobStore, storage: Storage, runner_factory: Callable[[], BatchRunner]
) -> list[list[str]]:
    """The queued ones among ``job_ids``, grouped by the runner (one by one when it cannot group them)."""
    queued = [job for job in (store.jobs.get(job_id) for job_id in job_ids) if job and job.status == JobStatus.queued]
    try:
        runner = runner_factory()
        groups = runner.group(queued, lambda job: JobContext(store, job, storage, "", None, runner.cache_dir))
    except Exception:  # noqa: BLE001 - grouping is an optimisation: run them one by one
        log.warning("could not group %d jobs; running them one by one", len(queued), exc_info=True)
        groups = [[job] for job in queued]
    return [[job.id for job in group] for group in groups]


def compatible_queued(
    job_id: str, store: JobStore, storage: Storage, runner: JobRunner, max_batch: int, scan: int = 64
) -> list[str]:
    """Distributed mode's collector: other queued jobs that can share ``job_id``'s denoising loop, read from the
    store's queued index (at most ``scan`` of them, however long the queue). Their own queue messages stay where
    they are; when one arrives later its claim finds the job taken and does nothing, and if this worker dies with the
    batch, each job's lease expires and the reaper queues it again."""
    if not isinstance(runner, BatchRunner):
        return [job_id]
    others = [i for i in store.jobs.ids_with_status(JobStatus.queued, scan) if i != job_id]
    if not others:  # the common case when the service keeps up: one read, no record parsed
        return [job_id]
    job = store.jobs.get(job_id)
    if job is None or job.status != JobStatus.queued:
        return [job_id]
    candidates = [j for j in (store.jobs.get(i) for i in others) if j and j.type == job.type]
    if not candidates:
        return [job_id]
    for group in runner.group(
        [job, *candidates], lambda j: JobContext(store, j, storage, "", None, runner.cache_dir), max_batch
    ):
        if group[0].id == job_id:
            return [j.id for j in group]
    return [job_id]


def _run_group(
    job_ids: list[str],
    store: JobStore,
    storage: Storage,
    runner_factory: Callable[[], JobRunner],
    worker_id: str,
    lease_ttl: float,
    heartbeat_interval: float,
) -> dict[str, JobRecord | None]:
    # 1. claim: each job gets its own lease and owner token (a job canceled or taken meanwhile drops out); each
    # claim's bookkeeping goes on beside the run, done before any job of the group finishes
    beside = _Beside(store.backend.remote)
    claimed_at = time.monotonic()  # before any claim was sent: each lease lives at least lease_ttl from here
    jobs = [job for job in (lifecycle.claim(store, job_id, worker_id, lease_ttl, beside) for job_id in job_ids) if job]
    if not jobs:
        return {}
    finals: dict[str, JobRecord | None] = {}
    with ExitStack() as stack:
        # 2. a heartbeat per job for the whole attempt (a model load included)
        lost = {job.id: threading.Event() for job in jobs}
        beats = {
            job.id: Heartbeat(store, job.id, job.lease_token, lease_ttl, heartbeat_interval, lost[job.id].set)
            for job in jobs
        }
        for beat in beats.values():
            stack.enter_context(beat.claimed_at(claimed_at))
        t0 = time.perf_counter()
        try:
            runner = runner_factory()  # the first jobs after a start wait here for torch and the engines
        except Exception as e:  # noqa: BLE001 - no engines in this worker: every job fails, recorded
            runner = _Broken(e)
        startup_ms = round((time.perf_counter() - t0) * 1000, 3)
        ctxs = {}
        cache_dir = runner.cache_dir if isinstance(runner, BatchRunner) else None
        for job in jobs:
            timeout = job.options.timeout_s
            deadline = time.monotonic() + timeout if timeout else None
            alive = lambda beat=beats[job.id]: beat.alive_until  # noqa: E731 - until when the heartbeat holds the lease
            ctxs[job.id] = JobContext(store, job, storage, job.lease_token, deadline, cache_dir, lost[job.id], alive)
        # 3. run: one batch, or the job alone
        t_run = time.perf_counter()
        if len(jobs) == 1:
            outcomes = [_attempt(lambda: runner.run(jobs[0], ctxs[jobs[0].id]))]
        else:
            try:  # several jobs are a group, made by a BatchRunner
                outcomes = runner.run_batch(jobs, [ctxs[j.id] for j in jobs])
            except Exception as e:  # noqa: BLE001 - the batch could not start: each job records why
                outcomes = [e] * len(jobs)
        # 4. each job's share of the device's time (the run's, split by images), then publish and finish it alone;
        # the bookkeeping of them all (metrics, usage, webhook deliveries) goes out in one batch after the last
        shares = device_shares(jobs, (time.perf_counter() - t_run) * 1000)
        beside.wait()  # the start webhook and the backlog's take come before the end
        to_record: list[JobRecord] = []
        try:
            with store.batch(metrics_after=True):  # the status events first, the metrics in a round trip after
                store.limits.observe("diffuserve_batch_size", {"type": jobs[0].type.value}, len(jobs), BATCH_BUCKETS)
                for job, outcome in zip(jobs, outcomes, strict=True):  # run_batch answers once per job
                    finals[job.id] = _complete(
                        job, ctxs[job.id], outcome, store, storage, startup_ms, shares[job.id], to_record
                    )
        except Unavailable:  # the jobs are finished; what the store could not take is logged
            log.warning("jobs %s: their metrics, usage and webhook deliveries were not recorded", list(finals))
        finally:
            for done in to_record:  # 5. each record's copy in storage, after the status events went out
                records.write(storage, done)
    return finals


class _Beside:
    """Runs the claims' bookkeeping (one round trip each to a remote store) on a thread of the process while the job
    goes on to its model, so that write is off every job's way to the device; in memory it runs at once (a thread
    hop would cost more). ``wait`` returns when all of it is written (or logged as lost)."""

    _pool: ThreadPoolExecutor | None = None
    _pid = 0

    def __init__(self, remote: bool):
        self.remote = remote
        self.futures: list[Future] = []

    def __call__(self, fn: Callable[[], None]) -> None:
        if not self.remote:
            fn()
            return
        if _Beside._pool is None or _Beside._pid != os.getpid():  # one thread per process (prefork children too)
            _Beside._pool, _Beside._pid = ThreadPoolExecutor(1, thread_name_prefix="job-start"), os.getpid()
        self.futures.append(_Beside._pool.submit(fn))

    def wait(self) -> None:
        for future in self.futures:
            try:
                future.result()
            except Exception:  # noqa: BLE001 - bookkeeping: the job goes on (the scheduler drops a stale entry)
                log.warning("a job's start bookkeeping failed", exc_info=True)
        self.futures.clear()


class _Broken:
    """Stands in for engines that could not be built: each job fails with the error that stopped them."""

    def __init__(self, error: Exception):
        self.error = error

    def run(self, job: JobRecord, ctx: JobContext) -> RunResult:
        raise self.error

    def run_batch(self, jobs: list[JobRecord], ctxs: list[JobContext]) -> list[RunResult | BaseException]:
        return [self.error] * len(jobs)


def _attempt(fn: Callable[[], RunResult]) -> RunResult | BaseException:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the outcome of one job, recorded by _complete
        return e


def _complete(
    job: JobRecord,
    ctx: JobContext,
    outcome: RunResult | BaseException,
    store: JobStore,
    storage: Storage,
    startup_ms: float = 0.0,
    device_ms: float = 0.0,
    to_record: list[JobRecord] | None = None,
) -> JobRecord | None:
    """Publish a job's outputs and finish it (succeeded, canceled or failed), as its lease owner only; its device
    time is recorded (metrics, usage) whatever the outcome. The finished record is appended to ``to_record`` (its
    copy in storage is written by the caller, after the status event: the copy's JSON and PUT hold the GIL, which
    would delay the event that wakes the client)."""
    to_record = [] if to_record is None else to_record
    job_id, token = job.id, ctx.token
    written: list[str] = []  # output keys, removed again unless the job succeeds
    error: JobErrorInfo | None = None

    def account(done: JobRecord) -> None:  # written with the finish, before its status event
        _account(store, done, device_ms)
        if done.status == JobStatus.succeeded:
            _count_images(store.limits, done)

    try:
        if isinstance(outcome, BaseException):
            raise outcome
        done = _publish(job_id, outcome, ctx, store, storage, startup_ms, written, device_ms, account)
    except LeaseLost:
        log.warning("job %s moved on to another worker; this attempt writes nothing", job_id)
        return store.jobs.get(job_id)
    except JobCancelled:
        done = lifecycle.finish(
            store, job_id, token, JobStatus.canceled, metrics=Metrics(device_ms=device_ms), account=account
        )
    except Exception as e:  # noqa: BLE001 - recorded; the worker lives on
        if not isinstance(e, ServiceError):
            log.error("job %s failed", job_id, exc_info=e)
        error = _failure(e, job_id)
        done = lifecycle.finish(
            store, job_id, token, JobStatus.failed, error=error, metrics=Metrics(device_ms=device_ms), account=account
        )
    if done is None:
        return store.jobs.get(job_id)  # someone else finished it (the reaper, or a newer owner)
    if done.status != JobStatus.succeeded:
        _remove_outputs(storage, written, job_id)  # no half set of outputs stays behind a failed job
    if error is None or error.code != "storage_unavailable":
        to_record.append(done)  # the bucket alone tells what happened (written once the status event is out)
    return done


def _publish(
    job_id: str,
    result: RunResult,
    ctx: JobContext,
    store: JobStore,
    storage: Storage,
    startup_ms: float,
    written: list[str],
    device_ms: float = 0.0,
    account: Callable[[JobRecord], None] | None = None,
) -> JobRecord | None:
    """Write a result's artifacts under the job's output keys (appending each to ``written``) and finish the job
    succeeded; raises LeaseLost when the job is no longer ours."""
    ctx._owned()  # outputs are written by the lease owner only
    t0 = time.perf_counter()
    outputs = []
    for i, a in enumerate(result.artifacts):
        key = output_key(job_id, i, a.extension)
        storage.put(key, a.data, a.content_type)
        written.append(key)
        outputs.append(OutputItem(content_type=a.content_type, key=key, **a.meta))
    upload_ms = (time.perf_counter() - t0) * 1000
    ctx.check()
    metrics = Metrics(
        startup_ms=startup_ms,
        load_ms=round(result.load_ms, 3),
        inference_ms=round(result.inference_ms, 3),
        upload_ms=round(upload_ms, 3),
        device_ms=round(device_ms, 3),
    )
    return lifecycle.finish(
        store, job_id, ctx.token, JobStatus.succeeded, outputs, None, metrics, result.model, result.versions, account
    )


def device_shares(jobs: list[JobRecord], run_ms: float) -> dict[str, float]:
    """Each job's share of a run's device time: by the images it asked for (a job alone: the whole run)."""
    images = {job.id: max(1, int(job.input.get("num_images") or 1)) for job in jobs}
    total = sum(images.values())
    return {job_id: round(run_ms * n / total, 3) for job_id, n in images.items()}


def _account(store: JobStore, done: JobRecord, device_ms: float) -> None:
    """The tenant's usage (per UTC day and model: GET /v1/usage, the daily quota) and the per-tenant counter of
    /metrics; never fails the job."""
    model = done.model.id if done.model else "none"
    images = sum(1 for o in done.output if o.content_type.startswith("image/"))
    try:
        store.usage.add(done.tenant, usage_today(), model, images, device_ms)
        store.limits.incr("diffuserve_device_seconds_total", {"tenant": done.tenant, "model": model}, device_ms / 1000)
    except Unavailable:
        log.warning("job %s: its device time could not be recorded", done.id)


def _count_images(limits: Limits, done: JobRecord) -> None:
    """Per-model throughput: rate(diffuserve_images_total[1m]) is images/s."""
    images = sum(1 for o in done.output if o.content_type.startswith("image/"))
    if images:
        model = done.model.id if done.model else "none"
        limits.incr("diffuserve_images_total", {"model": model, "type": done.type.value}, images)


def _remove_outputs(storage: Storage, keys: list[str], job_id: str) -> None:
    for key in keys:
        try:
            storage.delete(key)
        except Exception:  # noqa: BLE001 - retention removes the rest with the job
            log.warning("could not remove %s of failed job %s", key, job_id)
