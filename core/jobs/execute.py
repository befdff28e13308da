"""Running one job, the same code for the Celery task and the embedded worker thread:
claim it, keep its lease alive, call the runner, store outputs under fixed keys, finish, write the record."""

from __future__ import annotations

import base64
import json
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

from core.contract import RunResult
from core.errors import (
    DeadlineExceeded,
    InputExpired,
    JobCancelled,
    LeaseLost,
    OutOfMemory,
    ServiceError,
    StorageUnavailable,
    Unavailable,
)
from core.jobs import lifecycle
from core.jobs.store import JobStore
from core.schemas import JobErrorInfo, JobRecord, JobStatus, Metrics, OutputItem
from core.storage import Storage, upload_key

log = logging.getLogger("diffuserve.worker")

MAX_PREVIEWS = 64  # preview events per job
MAX_PREVIEW_BYTES = 256 * 1024
PROGRESS_RECORD_S = 0.5  # the record's progress is rewritten at most this often (events carry every step)


class JobContext:
    """The :class:`core.contract.RunContext` of one attempt of a job: progress (raises JobCancelled when asked to
    stop, LeaseLost when the job moved on to another worker, DeadlineExceeded past ``timeout_s``), checkpoints,
    inputs and registrations. Only this class touches the store and the storage on an executor's behalf."""

    def __init__(
        self,
        store: JobStore,
        job: JobRecord,
        storage: Storage,
        token: str | None = None,
        deadline: float | None = None,
        cache_dir: Path | None = None,
        lost: threading.Event | None = None,
    ):
        self.store = store
        self.job = job
        self.job_id = job.id
        self.tenant = job.tenant
        self.storage = storage
        self.token = token if token is not None else job.lease_token
        self.deadline = deadline
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "diffuserve-cache"
        self.lost = lost or threading.Event()  # set by the heartbeat when the lease is no longer ours
        self._cancel = False
        self._recorded = 0.0  # when the record's progress was last rewritten
        self._previews = 0

    def check(self) -> None:
        """Raise if the job must stop now: its lease is gone or its deadline passed."""
        if self.lost.is_set():
            raise LeaseLost(f"job {self.job.id} is no longer ours")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded(f"the job ran past its timeout_s of {self.job.input.get('timeout_s')}")

    def progress(self, step: int, total: int, **extra: float) -> None:
        """Every step is an event (what streams show) and a cancel check; the record's ``progress`` is rewritten at
        the first and last steps and at most every ``PROGRESS_RECORD_S`` in between."""
        self.check()
        now = time.monotonic()
        record = step <= 1 or step >= total or now - self._recorded >= PROGRESS_RECORD_S
        try:
            self._cancel = lifecycle.report_progress(
                self.store, self.job.id, self.token, step, total, record=record, **extra
            )
            if record:
                self._recorded = now
        except Unavailable:
            return  # a store blip costs one progress event; the heartbeat decides whether the job is still ours
        if self._cancel:
            raise JobCancelled(f"canceled at step {step}")

    def cancelled(self) -> bool:
        return self._cancel

    def preview(self, step: int, total: int, png: bytes) -> None:
        """A ``preview`` event: the PNG as a data URI, at most ``MAX_PREVIEWS`` per job and ``MAX_PREVIEW_BYTES`` each
        (what the event log holds stays bounded whatever the request)."""
        if self._previews >= MAX_PREVIEWS or len(png) > MAX_PREVIEW_BYTES:
            return
        self._previews += 1
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        try:
            self.store.events.add_event(self.job.id, "preview", {"step": step, "total": total, "image": uri})
        except Exception:  # noqa: BLE001 - a preview is a courtesy: never fails the job
            log.debug("preview of %s dropped", self.job.id)

    def _owned(self) -> None:
        self.check()
        if not lifecycle.owns(self.store, self.job.id, self.token):  # only the lease owner writes
            raise LeaseLost(f"job {self.job.id} is no longer ours")

    def save_checkpoint(self, name: str, data: bytes) -> bool:
        """A failed save is skipped, not fatal: the run goes on and the next checkpoint tries again."""
        self._owned()
        try:
            self.storage.put(f"jobs/{self.job.id}/{name}", data, "application/octet-stream")
            return True
        except StorageUnavailable:
            log.warning("checkpoint of %s skipped: storage unavailable", self.job.id)
            return False

    def load_checkpoint(self, name: str) -> bytes | None:
        try:
            return self.storage.get(f"jobs/{self.job.id}/{name}")
        except KeyError:
            return None

    def open_input(self, upload_id: str) -> bytes:
        try:
            return self.storage.get(upload_key(self.tenant, upload_id))
        except KeyError:
            raise InputExpired(f"upload {upload_id!r} expired before the job read it; upload it again") from None

    def registration(self, kind: str, name: str) -> dict | None:
        return self.store.registrations.registration(self.tenant, kind, name)

    def registered(self, kind: str, name: str) -> tuple[dict, Path] | None:
        from core import tenant_models

        record = self.registration(kind, name)
        if record is None:
            return None
        return record, tenant_models.materialize(self.storage, record, self.cache_dir)

    def register(self, kind: str, name: str, folder: Path, extra: dict | None = None) -> dict:
        from core import tenant_models

        self._owned()
        return tenant_models.publish(self.store, self.storage, self.tenant, kind, name, folder, self.job.id, extra)


class JobRunner(Protocol):
    """Turns a job into a result (``core.runner.Engines``: typed request, executor table)."""

    cache_dir: Path

    def run(self, job: JobRecord, ctx: JobContext) -> RunResult: ...


def output_key(job_id: str, index: int, extension: str) -> str:
    return f"jobs/{job_id}/{index}.{extension}"


def record_key(job_id: str) -> str:
    return f"jobs/{job_id}/job.json"


class Heartbeat:
    """Renews the job's lease while it runs; when the process dies the lease expires and the reaper re-queues.
    When a renewal finds the job no longer ours, ``on_lost`` is called and the beating stops.

    One beater thread per process renews every running job's lease (a thread started and joined per job cost about
    0.25 ms of each job's round trip)."""

    _lock = threading.Lock()
    _wake = threading.Condition(_lock)
    _beating: dict[int, Heartbeat] = {}
    _thread: threading.Thread | None = None

    def __init__(
        self, store: JobStore, job_id: str, token: str, ttl: float, interval: float, on_lost: Callable[[], None]
    ):
        self.store, self.job_id, self.token, self.ttl, self.interval = store, job_id, token, ttl, interval
        self.on_lost = on_lost
        self.due = 0.0

    @classmethod
    def _loop(cls) -> None:
        while True:
            with cls._lock:
                now = time.monotonic()
                due = [hb for hb in cls._beating.values() if hb.due <= now]
                for hb in due:
                    hb.due = now + hb.interval
                if not due:
                    nearest = min((hb.due for hb in cls._beating.values()), default=now + 60)
                    cls._wake.wait(max(0.0, nearest - now))
                    continue
            for hb in due:  # outside the lock: a slow store never blocks a job from starting or ending
                hb._beat()

    def _beat(self) -> None:
        try:
            if not self.store.leases.renew_lease(self.job_id, self.token, self.ttl):
                with self._lock:
                    if self._beating.pop(id(self), None) is None:
                        return  # the job ended while this beat was in flight
                log.warning("job %s: lease lost; stopping", self.job_id)
                self.on_lost()
        except Exception as e:  # noqa: BLE001 - a missed beat is retried; the lease outlives a few
            log.warning("heartbeat for %s failed: %s", self.job_id, type(e).__name__)

    def __enter__(self) -> Heartbeat:
        cls = type(self)
        with cls._lock:
            self.due = time.monotonic() + self.interval
            cls._beating[id(self)] = self
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(target=cls._loop, name="heartbeat", daemon=True)
                cls._thread.start()
            cls._wake.notify()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._beating.pop(id(self), None)


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
    job_ids: list[str], store: JobStore, storage: Storage, runner_factory: Callable[[], JobRunner]
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
    if not hasattr(runner, "group"):
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
    # 1. claim: each job gets its own lease and owner token (a job canceled or taken meanwhile drops out)
    jobs = [job for job in (lifecycle.claim(store, job_id, worker_id, lease_ttl) for job_id in job_ids) if job]
    if not jobs:
        return {}
    finals: dict[str, JobRecord | None] = {}
    with ExitStack() as stack:
        # 2. a heartbeat per job for the whole attempt (a model load included)
        lost = {job.id: threading.Event() for job in jobs}
        for job in jobs:
            stack.enter_context(
                Heartbeat(store, job.id, job.lease_token, lease_ttl, heartbeat_interval, lost[job.id].set)
            )
        t0 = time.perf_counter()
        try:
            runner = runner_factory()  # the first jobs after a start wait here for torch and the engines
        except Exception as e:  # noqa: BLE001 - no engines in this worker: every job fails, recorded
            runner = _Broken(e)
        startup_ms = round((time.perf_counter() - t0) * 1000, 3)
        ctxs = {}
        for job in jobs:
            timeout = job.input.get("timeout_s")
            deadline = time.monotonic() + timeout if timeout else None
            ctxs[job.id] = JobContext(
                store, job, storage, job.lease_token, deadline, getattr(runner, "cache_dir", None), lost[job.id]
            )
        # 3. run: one batch, or the job alone
        store.limits.observe("diffuserve_batch_size", {"type": jobs[0].type.value}, len(jobs), BATCH_BUCKETS)
        if len(jobs) == 1:
            outcomes = [_attempt(lambda: runner.run(jobs[0], ctxs[jobs[0].id]))]
        else:
            try:
                outcomes = runner.run_batch(jobs, [ctxs[j.id] for j in jobs])
            except Exception as e:  # noqa: BLE001 - the batch could not start: each job records why
                outcomes = [e] * len(jobs)
        # 4. publish and finish each job on its own
        for job, outcome in zip(jobs, outcomes):
            finals[job.id] = _complete(job, ctxs[job.id], outcome, store, storage, startup_ms)
    return finals


class _Broken:
    """Stands in for engines that could not be built: each job fails with the error that stopped them."""

    def __init__(self, error: Exception):
        self.error = error

    def run(self, job: JobRecord, ctx: JobContext) -> RunResult:
        raise self.error


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
) -> JobRecord | None:
    """Publish a job's outputs and finish it (succeeded, canceled or failed), as its lease owner only."""
    job_id, token = job.id, ctx.token
    written: list[str] = []
    error: JobErrorInfo | None = None
    try:
        if isinstance(outcome, BaseException):
            raise outcome
        result = outcome
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
        )
        done = lifecycle.finish(
            store, job_id, token, JobStatus.succeeded, outputs, None, metrics, result.model, result.versions
        )
    except LeaseLost:
        log.warning("job %s moved on to another worker; this attempt writes nothing", job_id)
        return store.jobs.get(job_id)
    except JobCancelled:
        done = lifecycle.finish(store, job_id, token, JobStatus.canceled)
    except Exception as e:  # noqa: BLE001 - recorded; the worker lives on
        if not isinstance(e, ServiceError):
            log.error("job %s failed", job_id, exc_info=e)
        error = _failure(e, job_id)
        done = lifecycle.finish(store, job_id, token, JobStatus.failed, error=error)
    if done is None:
        return store.jobs.get(job_id)  # someone else finished it (the reaper, or a newer owner)
    if done.status == JobStatus.succeeded:  # per-model throughput: rate(diffuserve_images_total[1m]) is images/s
        images = sum(1 for o in done.output if o.content_type.startswith("image/"))
        if images:
            model = done.model.id if done.model else "none"
            store.limits.incr("diffuserve_images_total", {"model": model, "type": done.type.value}, images)
    if done.status != JobStatus.succeeded:
        for key in written:  # no half set of outputs stays behind a failed job
            try:
                storage.delete(key)
            except Exception:  # noqa: BLE001 - retention removes the rest with the job
                log.warning("could not remove %s of failed job %s", key, job_id)
    if error is None or error.code != "storage_unavailable":
        records.write(storage, done)  # the bucket alone tells what happened
    return done


class RecordWriter:
    """Writes each finished job's record (``jobs/{id}/job.json``) beside its outputs, on a thread of its own: the
    store already holds the record, so the worker takes its next job instead of waiting on one more object write
    (one S3 PUT, 3-5 ms). ``flush`` waits until every record handed over is written."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def write(self, storage: Storage, job: JobRecord) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="record-writer", daemon=True)
                self._thread.start()
        self._queue.put((storage, job))

    def _loop(self) -> None:
        while True:
            storage, job = self._queue.get()
            try:
                data = json.dumps(job.model_dump(mode="json"), indent=2).encode()
                storage.put(record_key(job.id), data, "application/json")
            except Exception:  # noqa: BLE001 - the store holds the record; the copy is best effort
                log.warning("could not write the record of %s", job.id)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 30.0) -> bool:
        """True when every record handed over so far is written (or given up on) within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True


records = RecordWriter()
