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
