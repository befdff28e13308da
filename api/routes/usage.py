"""The caller's own usage: jobs, images and device-seconds, by model and by UTC day."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from api.deps import backends, tenant
from api.state import Backends
from core.jobs import usage
from core.schemas import UsageReport

router = APIRouter()


@router.get("/usage", response_model=UsageReport, name="usage")
async def get_usage(
    days: int = Query(30, ge=1, le=90, description="the last N UTC days, today included"),
    t: str = Depends(tenant),
    b: Backends = Depends(backends),
) -> UsageReport:
    """What the caller's jobs cost: each finished job's `metrics.device_ms` (a batch's time split by images) summed,
    in all, by model and by day. Its `device_seconds_per_day` quota counts the same."""
    return UsageReport.model_validate(await run_in_threadpool(usage.report, b.store.usage, t, days))
