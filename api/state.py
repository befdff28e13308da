"""The gateway's backends, built once from Settings in the app's lifespan.

Distributed mode enqueues on Celery by task name; embedded mode on the queue of the in-process worker that the entry
point hands in (``serve``, ``worker/embedded.py``): no module of the gateway builds engines or runs jobs itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from api.config import Settings
from api.waiters import Waiters
from core.jobs import lifecycle
from core.jobs.lifecycle import Queue
from core.jobs.store import JobStore
from core.registry import ModelRegistry
from core.settings import build_registry, build_storage
from core.storage import Storage
from core.tenants import Tenants

# a webhook body by the API a job came through (``via.api``): its delivery record → the body sent
WebhookShape = Callable[[dict, dict], dict]


class InProcessWorker(Protocol):
    """Embedded mode's worker, composed at the entry point: started with the gateway's store, storage and registry,
    it runs their jobs in this process and returns the queue the gateway enqueues on."""

    def start(self, store: JobStore, storage: Storage, registry: ModelRegistry) -> Queue: ...


@dataclass
class Backends:
    settings: Settings
    store: JobStore
    storage: Storage
    queue: Queue
    registry: ModelRegistry
    tenants_by_key: dict[str, str]
    waiters: Waiters
    tenants: Tenants = field(default_factory=Tenants)
    webhook_shapes: dict[str, WebhookShape] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "distributed" if self.settings.distributed else "embedded"

    def start(self) -> None:
        """The reaper (orphans, unsent jobs, retention) and the listener that wakes long-polls; call on the loop."""
        s = self.settings
        self._threads.append(
            lifecycle.start_reaper(
                self.store, self.queue, self.storage, s.reaper_interval_s, s.max_attempts, self._stop
            )
        )
        self.waiters.start(self._stop)
        from core.webhooks import Deliverer

        self._threads.append(
            Deliverer(
                self.store,
                s.resolved_webhook_secret(),
                self.storage.url,
                allow_private=s.webhook_allow_private,
                retry_s=s.webhook_retry_s,
                backoff_s=s.webhook_backoff_s,
                timeout_s=s.webhook_timeout_s,
                concurrency=s.webhook_concurrency,
                per_tenant=s.webhook_per_tenant,
                per_host=s.webhook_per_host,
                shapes=self.webhook_shapes,
            ).start(self._stop)
        )

    def close(self) -> None:
        self._stop.set()
        close = getattr(self.queue, "close", None)
        if close:
            close()
        self.store.close()


def build_backends(
    settings: Settings,
    worker: InProcessWorker | None = None,
    webhook_shapes: dict[str, WebhookShape] | None = None,
) -> Backends:
    """The store, storage, registry and queue of ``settings``' mode; embedded mode needs ``worker``."""
    if not settings.distributed and worker is None:
        raise RuntimeError(
            "embedded mode (BROKER_URL unset) runs jobs in this process: serve the app of `uvicorn --factory "
            "serve:create_app`, which hands it the in-process worker, or set BROKER_URL (distributed mode)"
        )
    registry = build_registry(settings)
    storage = build_storage(settings, settings.resolved_signing_key())

    if settings.distributed:
        from core.jobs.queue import CeleryQueue
        from core.jobs.redis_store import redis_store

        store: JobStore = redis_store(
            settings.redis_url or settings.broker_url, settings.job_ttl_s, settings.redis_max_connections
        )
        queue: Queue = CeleryQueue(settings.broker_url, settings.visibility_timeout_s)
    else:
        from core.jobs.store import memory_store

        store = memory_store(settings.job_ttl_s)
        queue = worker.start(store, storage, registry)  # torch loads on its threads, after the server answers

    return Backends(
        settings,
        store,
        storage,
        queue,
        registry,
        settings.tenants_by_key(),
        Waiters(store, settings.max_waits_per_tenant),
        settings.tenants(),
        webhook_shapes or {},
    )
