"""The gateway's backends, built once from Settings in the app's lifespan."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from api.config import Settings
from api.waiters import Waiters
from core.jobs import lifecycle
from core.jobs.store import JobStore
from core.registry import ModelRegistry
from core.settings import build_engines, build_registry, build_storage
from core.storage import Storage


@dataclass
class Backends:
    settings: Settings
    store: JobStore
    storage: Storage
    queue: object
    registry: ModelRegistry
    tenants_by_key: dict[str, str]
    waiters: Waiters
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
        from api.compat import replicate
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
                shapes={"replicate": replicate.webhook_body},  # a prediction's webhook carries the prediction
            ).start(self._stop)
        )

    def close(self) -> None:
        self._stop.set()
        close = getattr(self.queue, "close", None)
        if close:
            close()
        self.store.close()


def build_backends(settings: Settings) -> Backends:
    registry = build_registry(settings)
    storage = build_storage(settings, settings.resolved_signing_key())

    if settings.distributed:
        from core.jobs.queue import CeleryQueue
        from core.jobs.redis_store import redis_store

        store: JobStore = redis_store(
            settings.redis_url or settings.broker_url, settings.job_ttl_s, settings.redis_max_connections
        )
        queue = CeleryQueue(settings.broker_url, settings.visibility_timeout_s)
    else:
        from core.jobs.execute import execute_batch, execute_job
        from core.jobs.queue import InProcessQueue
        from core.jobs.store import memory_store

        store = memory_store(settings.job_ttl_s)
        # torch loads in the embedded worker thread, after the server already answers
        runner = build_engines(settings, registry, lambda model, ms: lifecycle.record_model_load(store, model, ms))

        def handle(job_id: str) -> None:
            execute_job(job_id, store, storage, runner, "embedded", settings.lease_ttl_s, settings.heartbeat_s)

        def handle_batch(job_ids: list[str]) -> None:
            execute_batch(job_ids, store, storage, runner, "embedded", settings.lease_ttl_s, settings.heartbeat_s)

        queue = InProcessQueue(
            handle,
            handle_batch=handle_batch,
            batch_window_s=settings.batch_window_ms / 1000,
            max_batch=settings.max_batch,
        )
        queue.start()
        if settings.warm_model_ids:
            threading.Thread(
                target=lambda: runner().warm_up(settings.warm_model_ids), name="warm-up", daemon=True
            ).start()

    return Backends(
        settings,
        store,
        storage,
        queue,
        registry,
        settings.tenants_by_key(),
        Waiters(store, settings.max_waits_per_tenant),
    )
