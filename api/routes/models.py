"""Models and schedulers the service can serve."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from api.deps import backends, tenant
from api.state import Backends
from core.schemas import ModelInfo

router = APIRouter()

SCHEDULERS = {
    "ddim": "DDIM (Song et al.), deterministic with eta=0; engine and diffusers models",
    "ddpm": "DDPM ancestral sampling; engine and diffusers models",
    "euler": "Euler: the flow-matching ODE solver for engine flow models; Euler discrete for diffusers models",
}


@router.get("/models", response_model=list[ModelInfo])
async def list_models(_: str = Depends(tenant), b: Backends = Depends(backends)):
    """Every model found in the bundled folder and MODELS_DIR, with its tasks, native size and labels."""
    entries = await run_in_threadpool(b.registry.list)
    return [e.info() for e in entries]


@router.get("/schedulers")
async def list_schedulers(_: str = Depends(tenant)) -> dict[str, str]:
    """Scheduler names a request may give (each model lists the ones it accepts in GET /v1/models)."""
    return SCHEDULERS
