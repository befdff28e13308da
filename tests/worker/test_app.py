"""The Celery app's contract: the task name the gateway sends, late acks, one job at a time, both queues."""

import os
import subprocess
from types import SimpleNamespace

import pytest
from celery.concurrency.solo import TaskPool as SoloPool

from core.jobs.queue import TASK_NAME
from tests.conftest import REPO, Proc, bin_path, wait_for


def test_task_registered_with_late_acks_and_prefetch_one(monkeypatch, redis_server):
    monkeypatch.setenv("BROKER_URL", redis_server)
    import importlib

    import worker.app as app_module

    app_module = importlib.reload(app_module)
    app = app_module.app
    task = app.tasks[TASK_NAME]
    assert task.acks_late and task.reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1 and app.conf.task_acks_late
    assert app.conf.broker_url == redis_server
    assert app.conf.broker_transport_options["visibility_timeout"] >= 3600


def test_settings_refuse_a_non_redis_broker(monkeypatch):
    import pytest
    from pydantic import ValidationError

    from worker.config import WorkerSettings

    monkeypatch.setenv("BROKER_URL", "amqp://guest@localhost//")
    with pytest.raises(ValidationError, match="redis"):
        WorkerSettings()


def _threads_worker(redis_server: str, tmp_path, *flags: str) -> tuple[list[str], dict]:
    """(command, environment) of a worker on the thread pool with ``flags``, on the tests' own Redis."""
    env = {**os.environ, "BROKER_URL": redis_server, "DATA_DIR": str(tmp_path), "WARM_MODELS": ""}
    cmd = [bin_path("celery"), "-A", "worker.app", "worker", "--pool", "threads", *flags, "--without-gossip",
           "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]  # fmt: skip
    return cmd, env


@pytest.mark.parametrize("flags", [["-c", "2"], ["-c", "auto"], ["-c", "1", "--autoscale", "4,2"]])
def test_a_pool_that_would_run_two_jobs_in_one_process_is_refused(flags, redis_server, tmp_path):
    """Jobs in one process share each warm pipeline's active LoRA adapters: with ``--pool threads -c 2`` (or
    ``-c auto``, a string when the guard runs, or ``--autoscale``) one job would draw with another tenant's. The
    worker exits at start (EX_CONFIG, 78) naming the pool to use."""
    cmd, env = _threads_worker(redis_server, tmp_path, *flags)
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 78, done.stderr[-2000:]
    assert "one job per process: use --pool solo" in done.stderr and "ready." not in done.stderr


def test_one_thread_runs_and_a_solo_worker_starts_its_reaper_once(redis_server, tmp_path):
    """``--pool threads -c 1`` is one job at a time: it runs. A solo pool sends both worker_init and
    worker_process_init from its main process: warm-up and the reaper start once (they started twice)."""
    import worker.app as app_module

    cmd, env = _threads_worker(redis_server, tmp_path, "-c", "1")
    proc = Proc(cmd, tmp_path / "worker.log", env=env, cwd=REPO)
    try:
        # ready, and it says what it warmed (its start ran; the line is logged once Celery's logging is set up)
        wait_for(lambda: b"ready." in proc.log.read_bytes() and b"warm: " in proc.log.read_bytes(), 90,
                 what=f"the worker: {proc.tail()}")  # fmt: skip
    finally:
        proc.stop()
    calls = []
    fake = SimpleNamespace(warm_up=lambda: calls.append("warm_up"), start_reaper=lambda: calls.append("reaper"))
    solo = SimpleNamespace(pool_cls=SoloPool, concurrency=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app_module, "process", lambda: fake)
        mp.setattr(app_module, "_start_done", False)
        app_module._init_main(sender=solo)  # worker_init
        app_module._init_process()  # worker_process_init, sent by the solo pool
    assert calls == ["warm_up", "reaper"]
