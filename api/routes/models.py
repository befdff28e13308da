"""Models and schedulers the service can serve."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from api.deps import backends, tenant
from api.state import Backends
from core.catalog import SCHEDULER_DESCRIPTIONS
from core.registry import ModelEntry
from core.schemas import ModelInfo
from core.tenant_models import entry_from_record, registrations_of

router = APIRouter()


def model_entries(b: Backends, t: str) -> list[ModelEntry]:
    """Every model the tenant may use: the registry's, then those it trained. Blocking."""
    own = [e for r in registrations_of(b.store.registrations, t, "model") if (e := entry_from_record(r))]
    return b.registry.list() + own


@router.get("/models", response_model=list[ModelInfo])
async def list_models(t: str = Depends(tenant), b: Backends = Depends(backends)):
    """Every model found in the bundled folder and MODELS_DIR, and those the caller trained: tasks, size rules, labels."""  # noqa: E501

    entries = await run_in_threadpool(model_entries, b, t)
    controlnets = [
        ModelInfo(id=name, kind="controlnet", tasks=["controlnet"], base_models=b.registry.base_models_of(name))
        for name in b.registry.controlnet_names()
    ]
    return [e.info(b.registry.served_tasks(e)) for e in entries] + controlnets


@router.get("/schedulers")
async def list_schedulers(_: str = Depends(tenant)) -> dict[str, str]:
    """Scheduler names a request may give (each model lists the ones it accepts in GET /v1/models)."""
    return SCHEDULER_DESCRIPTIONS
