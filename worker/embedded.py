"""Embedded mode's worker: jobs run in the gateway's own process, on one thread per queue.

The entry point (``serve``) hands an :class:`EmbeddedWorker` to the app factory; the gateway starts it in its
lifespan with the store, storage and registry it built, and enqueues on the queue it gets back. Nothing here loads
torch at import: the engines are built on the worker thread by the first job (or the warm-up), after the server
already answers.
"""

from __future__ import annotations

import threading

from core.jobs import lifecycle
from core.jobs.execute import execute_batch, execute_job, take_turn
from core.jobs.queue import InProcessQueue
from core.jobs.store import JobStore
from core.registry import ModelRegistry
from core.settings import ServiceSettings
from core.storage import Storage
from worker.engines import build_engines

WORKER_ID = "embedded"


class EmbeddedWorker:
    """Runs the gateway's jobs in process: the in-process queue, the engines, the warm-up."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings

    def start(self, store: JobStore, storage: Storage, registry: ModelRegistry) -> InProcessQueue:
        """Start the queue's threads (and warm WARM_MODELS up on a thread of its own); returns the started queue."""
        s = self.settings
        runner = build_engines(
            s,
            registry,
            lambda model, ms: lifecycle.record_model_load(store.limits, model, ms),
            lambda model: lifecycle.queued_for(store, model),
        )

        def attempt(job_id: str, alone: bool = False):  # batches form in handle_batch, not here
            return execute_job(job_id, store, storage, runner, WORKER_ID, s.lease_ttl_s, s.heartbeat_s)

        def handle(job_id: str) -> None:
            # the message wakes; the scheduler picks the job. One job a message (drain=1): the other jobs' messages
            # wait in the in-process queue, which hands the ones that arrived together to handle_batch (a drain here
            # would run them one by one and no batch would ever form)
            take_turn(
                job_id, store, attempt, s.priority_age_s, drain=1, warm=runner.warm_models, affinity_s=s.affinity_wait_s
            )

        def handle_batch(job_ids: list[str]) -> None:
            # as many jobs as messages, the scheduler's picks, run together where they can share a loop
            chosen: list[str] = []
            for _ in job_ids:
                found = lifecycle.next_job(store, "inference", s.priority_age_s, exclude=chosen)
                if found is None:
                    break
                chosen.append(found[0])
            chosen += [j for j in job_ids if j not in chosen][: len(job_ids) - len(chosen)]
            done = execute_batch(chosen, store, storage, runner, WORKER_ID, s.lease_ttl_s, s.heartbeat_s)
            for record in done:
                if record is None:  # canceled between the pick and the claim: its message still runs one job
                    take_turn(chosen[0], store, attempt, s.priority_age_s)

        queue = InProcessQueue(
            handle, handle_batch=handle_batch, batch_window_s=s.batch_window_ms / 1000, max_batch=s.max_batch
        )
        queue.start()
        if s.warm_model_ids:
            threading.Thread(
                target=lambda: runner().warm.warm_up(s.warm_model_ids), name="warm-up", daemon=True
            ).start()
        return queue
