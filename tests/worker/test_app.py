"""The Celery app's contract: the task name the gateway sends, late acks, one job at a time, both queues."""

from core.jobs.queue import TASK_NAME


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


def test_a_pool_that_would_run_two_jobs_in_one_process_is_refused(redis_server, tmp_path):
    """Jobs in one process share each warm pipeline's active LoRA adapters: with ``--pool threads -c 2`` one job would
    draw with another tenant's. The worker exits at start (EX_CONFIG, 78) naming the pool to use; ``-c 1`` runs."""
    import os
    import subprocess

    from tests.conftest import REPO, bin_path

    env = {**os.environ, "BROKER_URL": redis_server, "DATA_DIR": str(tmp_path), "WARM_MODELS": ""}
    cmd = [bin_path("celery"), "-A", "worker.app", "worker", "--pool", "threads", "-c", "2", "--without-gossip",
           "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 78, done.stderr[-2000:]
    assert "one job per process: use --pool solo" in done.stderr and "ready." not in done.stderr
