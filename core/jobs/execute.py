"""Running one job, the same code for the Celery task and the embedded worker thread:
claim it, keep its lease alive, call the runner, store outputs under fixed keys, finish, write the record."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from core.errors import InputError, JobCancelled, JobError
from core.jobs import lifecycle
from core.jobs.store import JobStore
from core.schemas import JobErrorInfo, JobRecord, JobStatus, Metrics, ModelRef, OutputItem
from core.storage import Storage

log = logging.getLogger("diffuserve.worker")


@dataclass
class Artifact:
    data: bytes
    content_type: str
    extension: str
    meta: dict = field(default_factory=dict)


@dataclass
class RunResult:
    artifacts: list[Artifact]
    load_ms: float = 0.0
    inference_ms: float = 0.0
    model: ModelRef | None = None
    versions: dict[str, str] = field(default_factory=dict)


class RunContext:
    """What a runner sees of the service: a progress callback that raises JobCancelled when asked to stop."""

    def __init__(self, store: JobStore, job: JobRecord, storage: Storage):
        self.store = store
        self.job = job
        self.storage = storage

    def progress(self, step: int, total: int, **extra: float) -> None:
        if lifecycle.report_progress(self.store, self.job.id, step, total, **extra):
            raise JobCancelled(f"canceled at step {step}")


class Runner(Protocol):
    def run(self, job: JobRecord, ctx: RunContext) -> RunResult: ...


def output_key(job_id: str, index: int, extension: str) -> str:
    return f"jobs/{job_id}/{index}.{extension}"


def record_key(job_id: str) -> str:
    return f"jobs/{job_id}/job.json"


class Heartbeat:
    """Renews the job's lease while it runs; when the process dies the lease expires and the reaper re-queues."""

    def __init__(self, store: JobStore, job_id: str, owner: str, ttl: float, interval: float):
        self.store, self.job_id, self.owner, self.ttl, self.interval = store, job_id, owner, ttl, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.set_lease(self.job_id, self.owner, self.ttl)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease outlives a few
                log.warning("heartbeat for %s failed", self.job_id, exc_info=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def execute_job(
    job_id: str,
    store: JobStore,
    storage: Storage,
    runner_factory: Callable[[], Runner],
    worker_id: str,
    lease_ttl: float = 15.0,
    heartbeat_interval: float = 3.0,
) -> JobRecord | None:
    """Run ``job_id`` if it is still queued. Returns the finished record, or None when there was nothing to do."""
    job = lifecycle.claim(store, job_id, worker_id, lease_ttl)
    if job is None:
        return None  # canceled while queued, already done, or taken by another worker
    ctx = RunContext(store, job, storage)
    try:
        with Heartbeat(store, job_id, worker_id, lease_ttl, heartbeat_interval):
            result = runner_factory().run(job, ctx)
            t0 = time.perf_counter()
            outputs = []
            for i, a in enumerate(result.artifacts):
                key = output_key(job_id, i, a.extension)
                storage.put(key, a.data, a.content_type)
                outputs.append(OutputItem(content_type=a.content_type, key=key, **a.meta))
            upload_ms = (time.perf_counter() - t0) * 1000
        metrics = Metrics(load_ms=round(result.load_ms, 3), inference_ms=round(result.inference_ms, 3), upload_ms=round(upload_ms, 3))
        done = lifecycle.finish(store, job_id, JobStatus.succeeded, outputs, None, metrics, result.model, result.versions)
    except JobCancelled:
        done = lifecycle.finish(store, job_id, JobStatus.canceled)
    except (JobError, InputError) as e:
        code = getattr(e, "code", "invalid_input")
        done = lifecycle.finish(store, job_id, JobStatus.failed, error=JobErrorInfo(code=code, message=str(e)))
    except ValueError as e:  # core raises ValueError naming the bad value
        done = lifecycle.finish(store, job_id, JobStatus.failed, error=JobErrorInfo(code="invalid_input", message=str(e)))
    except Exception as e:  # noqa: BLE001 - recorded; the worker lives on
        log.exception("job %s failed", job_id)
        done = lifecycle.finish(
            store, job_id, JobStatus.failed, error=JobErrorInfo(code="internal_error", message=f"{type(e).__name__}: {e}")
        )
    final = done or store.get(job_id)
    if final is not None and final.status.is_terminal():
        try:  # the bucket alone tells what happened
            storage.put(record_key(job_id), json.dumps(final.model_dump(mode="json"), indent=2).encode(), "application/json")
        except Exception:  # noqa: BLE001
            log.warning("could not write the record of %s", job_id, exc_info=True)
    return final
