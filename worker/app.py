"""The Celery app: ``celery -A worker.app worker --pool solo`` (every queue; ``-Q inference`` or ``-Q training``
dedicates a worker to one).

One job at a time per process (it owns its GPU): acks late, prefetch 1. Models load once per process at
start-up (``worker_process_init``) and stay warm. A reaper thread re-queues jobs whose worker stopped
heart-beating, so a SIGKILLed worker loses no job even though Redis would redeliver its message only after
the visibility timeout.
"""

from __future__ import annotations

import logging
import os
import threading

from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown, worker_shutting_down
from kombu import Queue as KombuQueue

from core.jobs import lifecycle
from core.jobs.execute import compatible_queued, execute_batch, take_turn
from core.jobs.queue import QUEUES, TASK_NAME, CeleryQueue, make_celery
from core.jobs.redis_store import redis_store
from core.settings import build_registry, build_storage
from core.storage import Storage
from worker.config import WorkerSettings
from worker.engines import build_engines

log = logging.getLogger("diffuserve.worker")

settings = WorkerSettings()
app = make_celery(settings.broker_url, settings.visibility_timeout_s)
# a worker started without -Q consumes every queue, training included; -Q picks a subset
app.conf.task_queues = tuple(KombuQueue(name) for name in QUEUES)


class Process:
    """Per-process state: the store, storage, registry and the warm engines. Built once, lazily."""

    def __init__(self, s: WorkerSettings):
        self.settings = s
        self.store = redis_store(s.redis_url or s.broker_url, s.job_ttl_s)
        self.queue = CeleryQueue(s.broker_url, s.visibility_timeout_s)
        self.storage: Storage = build_storage(s, signing_key="unused-by-workers")
        self.registry = build_registry(s)
        self.worker_id = f"{s.worker_name}:{os.getpid()}"
        self.runner = build_engines(
            s, self.registry, self._record_load, lambda model: lifecycle.queued_for(self.store, model)
        )
        self._stop = threading.Event()
        self.last_batch = 1  # jobs in the previous batch this process ran

    def _record_load(self, model: str, ms: float) -> None:
        lifecycle.record_model_load(self.store.limits, model, ms)

    def warm_up(self) -> None:
        self.runner().warm.warm_up(self.settings.warm_model_ids)
        log.info("worker %s warm: %s", self.worker_id, self.settings.warm_model_ids)

    def start_reaper(self) -> None:
        s = self.settings
        lifecycle.start_reaper(self.store, self.queue, self.storage, s.reaper_interval_s, s.max_attempts, self._stop)
        if s.alive_file is not None:
            threading.Thread(target=self._keep_alive, name="alive-file", daemon=True).start()

    def _keep_alive(self) -> None:
        """ALIVE_FILE's time is the last moment this process ran and reached its store (the liveness probe's)."""
        path, every = self.settings.alive_file, self.settings.alive_every_s
        wait = 0.0  # at once, then every ALIVE_EVERY_S
        while not self._stop.wait(wait):
            wait = every
            try:
                if self.store.ping():
                    path.touch()
            except Exception:  # noqa: BLE001 - the probe sees the file age; the next round tries again
                log.warning("alive file: the store did not answer")


_process: Process | None = None


def process() -> Process:
    global _process
    if _process is None:
        _process = Process(settings)
    return _process


_started = threading.Lock()
_start_done = False


def _start() -> None:
    """Warm up and start the reaper, once per process: a solo pool sends ``worker_process_init`` from the main
    process after ``worker_init`` (both reach here), a prefork child sends only the first."""
    global _start_done
    with _started:
        if _start_done:
            return
        process().warm_up()
        process().start_reaper()
        _start_done = True


@worker_process_init.connect
def _init_process(**_: object) -> None:  # prefork children, and the solo pool's main process
    _start()


SHARED_POOLS = ("thread", "gevent", "eventlet")  # modules of the pools that run several tasks in one process


def _pool_module(sender: object) -> str:
    """The module of the worker's pool class (``celery.concurrency.solo``...), or the pool's name as given."""
    pool = getattr(sender, "pool_cls", "")
    return str(getattr(pool, "__module__", pool))


def one_job_at_a_time(sender: object) -> None:
    """Refuse (exit 78, EX_CONFIG) a pool that runs several jobs in one process: they would share each warm pipeline,
    its active LoRA adapters (another tenant's) and its compiled graphs. Several means ``-c`` above 1, ``-c auto``
    (a string until after this signal) or ``--autoscale``; solo and prefork (a process per job) pass."""
    pool = _pool_module(sender)
    if not any(name in pool for name in SHARED_POOLS):
        return
    concurrency = getattr(sender, "concurrency", 1)
    autoscale = getattr(sender, "autoscale", None) or (getattr(sender, "options", None) or {}).get("autoscale")
    if concurrency == 1 and not autoscale:
        return
    log.critical("a worker runs one job per process: use --pool solo (or prefork), not %s with -c %s%s",
                 pool.rsplit(".", 1)[-1], concurrency, f" --autoscale {autoscale}" if autoscale else "")  # fmt: skip
    raise SystemExit(78)  # EX_CONFIG; a receiver's Exception would only be logged by Celery's signal


@worker_init.connect
def _init_main(sender: object = None, **_: object) -> None:  # --pool solo / threads: the main process runs tasks
    one_job_at_a_time(sender)
    if "prefork" in _pool_module(sender):
        return  # each prefork child warms up in worker_process_init
    _start()


@worker_ready.connect
def _ready(**_: object) -> None:
    """Say what this process warmed: ``worker_init`` runs before Celery sets up its logging, so the warm-up's own line
    is lost in a solo worker (a prefork child logs its own; its parent warms nothing)."""
    if _start_done and _process is not None:
        log.info("worker %s warm: %s", _process.worker_id, _process.settings.warm_model_ids)


@worker_shutting_down.connect
def _shutting_down(**_: object) -> None:
    """SIGTERM (a scale-down, a rollout): take no new job. The one running finishes (Celery's warm shutdown waits for
    it; the pod's termination grace is longer than the longest job), the turn's drain stops after it, and the
    message is acked; a worker killed anyway leaves its job to the reaper, queued again when its lease expires."""
    if _process is not None:
        _process._stop.set()


@worker_shutdown.connect
def _shutdown(**_: object) -> None:
    if _process is not None:
        _process._stop.set()


@app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str | None:
    """Thin: the message wakes this worker; the scheduler picks the job it runs (``take_turn``: fair share between
    tenants, priorities); everything else happens in core.jobs.execute (claim, heartbeat, run, store, finish)."""
    p, s = process(), settings
    held = p.runner.warm_models  # the models this worker holds warm (none before its engines are built)
    queue = (run_job.request.delivery_info or {}).get("routing_key")  # the message's queue: no read to learn it
    done = take_turn(
        job_id,
        p.store,
        lambda chosen, alone: _run_with_batch(p, chosen, alone),
        s.priority_age_s,
        stop=p._stop,
        warm=held,
        affinity_s=s.affinity_wait_s,
        queue=queue if queue in QUEUES else None,
    )
    return done.status.value if done else None


def _run_with_batch(p: Process, job_id: str, alone: bool = False):
    """``job_id`` and the queued jobs that can share its denoising loop; its record (None: another worker took it).
    ``alone``: the scheduler saw no other job waiting for its model (no look for company then)."""
    s = settings
    ids = [job_id]
    if s.batch_window_ms > 0 and s.max_batch > 1:
        try:
            # gather when compatible jobs are already queued, or when the previous batch was shared (its clients
            # are about to send their next jobs): let more arrive for the window, then take them along (one
            # denoising loop for all); a lone client's job never pays the window, nor a look at the queue
            if p.last_batch > 1 or (
                not alone and len(compatible_queued(job_id, p.store, p.storage, p.runner(), s.max_batch)) > 1
            ):
                p._stop.wait(s.batch_window_ms / 1000)
                ids = compatible_queued(job_id, p.store, p.storage, p.runner(), s.max_batch)
        except Exception:  # noqa: BLE001 - batching is an optimisation; run the job alone
            log.warning("could not gather a batch for %s", job_id, exc_info=True)
    p.last_batch = len(ids)
    return execute_batch(ids, p.store, p.storage, p.runner, p.worker_id, s.lease_ttl_s, s.heartbeat_s)[0]
