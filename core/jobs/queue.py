"""Queues: Celery (distributed mode: the gateway sends by task name, never importing the worker) and an
in-process thread per queue (embedded mode), both feeding :func:`core.jobs.execute.execute_job`."""

from __future__ import annotations

import logging
import queue as stdlib_queue
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

log = logging.getLogger("diffuserve.queue")

TASK_NAME = "diffuserve.run_job"
QUEUES = ("inference", "training")


def celery_config(broker_url: str, visibility_timeout_s: int = 3600) -> dict:
    """Celery settings shared by the gateway and the workers."""
    # a redis:// broker: kombu's transport with one client per channel (core/jobs/broker.py); rediss:// and other
    # schemes keep kombu's own
    transport = {"broker_transport": "core.jobs.broker:Transport"} if urlparse(broker_url).scheme == "redis" else {}
    return {
        "broker_url": broker_url,
        **transport,
        "task_ignore_result": True,
        "task_acks_late": True,  # a message is acked after the job, so a crash leaves it in the broker
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,  # one job at a time per worker process: it owns the GPU
        "task_default_queue": "inference",
        "task_routes": {TASK_NAME: {"queue": "inference"}},
        # fail fast when the broker is away (the gateway answers 503; the worker reconnects on its own)
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout_s,
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
        },
        "broker_connection_timeout": 2,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "task_serializer": "json",
        "accept_content": ["json"],
    }


def make_celery(broker_url: str, visibility_timeout_s: int = 3600):
    from celery import Celery

    app = Celery("diffuserve")
    app.conf.update(celery_config(broker_url, visibility_timeout_s))
    return app


class CeleryQueue:
    def __init__(self, broker_url: str, visibility_timeout_s: int = 3600):
        self.app = make_celery(broker_url, visibility_timeout_s)
        self.broker_url = broker_url

    def enqueue(self, job_id: str, queue: str) -> None:
        self.app.send_task(TASK_NAME, args=[job_id], queue=queue)

    def ping(self) -> bool:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception:  # noqa: BLE001
            return False

    def close(self) -> None:
        pass


class InProcessQueue:
    """One daemon thread per queue name calling ``handle(job_id)``; torch loads in these threads, not at import."""

    def __init__(
        self,
        handle: Callable[[str], object],
        queues: tuple[str, ...] = QUEUES,
        handle_batch: Callable[[list[str]], object] | None = None,
        batch_window_s: float = 0.0,
        max_batch: int = 8,
    ):
        self.handle = handle
        # the inference queue gathers what arrives within batch_window_s (up to max_batch) and hands it over at once,
        # so jobs that can share a denoising loop run together
        self.handle_batch = handle_batch if batch_window_s > 0 and max_batch > 1 else None
        self.batch_window_s = batch_window_s
        self.max_batch = max_batch
        self._queues = {name: stdlib_queue.Queue() for name in queues}
        self._threads = [
            threading.Thread(target=self._loop, args=(name,), name=f"embedded-worker-{name}", daemon=True)
            for name in queues
        ]
        self._stopping = threading.Event()

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _loop(self, name: str) -> None:
        q = self._queues[name]
        last = 1  # the size of the previous batch
        while not self._stopping.is_set():
            job_id = q.get()
            if job_id is None:
                break
            batch = [job_id]
            # gather when others are already waiting, or when the previous batch was shared (its clients are about
            # to send their next jobs, a few ms apart): a lone client's job never pays the window
            if self.handle_batch is not None and name == "inference" and (not q.empty() or last > 1):
                deadline = time.monotonic() + self.batch_window_s
                while len(batch) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    try:
                        more = q.get(timeout=left)
                    except stdlib_queue.Empty:
                        break
                    if more is None:
                        self._stopping.set()
                        break
                    batch.append(more)
            last = len(batch)
            try:
                if len(batch) > 1:
                    self.handle_batch(batch)
                else:
                    self.handle(job_id)
            except Exception:  # noqa: BLE001 - execute_job records job failures; this is a bug guard
                log.exception("embedded worker failed on %s", batch)

    def enqueue(self, job_id: str, queue: str) -> None:
        self._queues[queue].put(job_id)

    def ping(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def close(self) -> None:
        self._stopping.set()
        for q in self._queues.values():
            q.put(None)
        for t in self._threads:
            t.join(timeout=5)
