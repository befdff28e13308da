"""The service's entry point: ``uvicorn --factory serve:create_app`` (``make run``).

It composes the gateway (``api``) with the in-process worker of embedded mode (``worker/embedded.py``), so that the
gateway itself imports nothing that runs jobs; in distributed mode (BROKER_URL set) it serves the gateway alone, and
Celery workers (``worker/app.py``) run the jobs.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.config import Settings
from api.main import create_app as create_gateway
from worker.embedded import EmbeddedWorker  # torch-free at import: the engines load on the worker's threads


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway of ``settings`` (read from the environment when None), with its in-process worker when embedded."""
    settings = settings or Settings()
    if settings.distributed:
        return create_gateway(settings)
    return create_gateway(settings, worker=EmbeddedWorker(settings))
