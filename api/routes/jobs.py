"""Jobs: read (with long-poll), list, cancel, and stream events (SSE)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from api.deps import backends, tenant
from api.errors import ApiError, shown
from api.state import Backends
from api.submit import job_view
from api.waiters import wait_for
from core.jobs import lifecycle
from core.schemas import Job, JobList, JobRecord, JobStatus

router = APIRouter()
KEEPALIVE_S = 15.0


def own_job(b: Backends, t: str, job_id: str, noun: str = "job") -> JobRecord:
    """The tenant's job ``job_id`` (blocking); 404 when unknown or another tenant's (never told apart)."""
    job = b.store.jobs.get(job_id) if len(job_id) <= 64 else None
    if job is None or job.tenant != t:
        raise ApiError(404, "not_found", f"no {noun} {shown(job_id)!r}", "id")
    return job


def cancel_own(b: Backends, t: str, job_id: str, noun: str = "job") -> JobRecord:
    """Cancel the tenant's job (blocking): a queued job never starts, a running one stops at its next step."""
    own_job(b, t, job_id, noun)
    return lifecycle.cancel(b.store, job_id)


@router.get("/jobs/{job_id}", response_model=Job)
async def get_job(
    request: Request,
    job_id: str,
    wait: float = Query(0, ge=0, le=60, description="long-poll up to this many seconds for a terminal status"),
    t: str = Depends(tenant),
    b: Backends = Depends(backends),
):
    """Read a job; with ?wait=N, answer as soon as it is terminal or after N seconds."""
    wait = min(wait, b.settings.max_wait_s)
    job = await b.waiters.read_until_terminal(t, job_id, wait, lambda i: own_job(b, t, i))
    # built from the record, already valid: answered as is (response_model documents it, without re-validating)
    return JSONResponse(job_view(job, b, str(request.base_url)))


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0, le=1_000_000),
    t: str = Depends(tenant),
    b: Backends = Depends(backends),
):
    """The caller's own jobs, newest first."""
    jobs = await run_in_threadpool(b.store.jobs.list, t, limit + 1, offset)
    base = str(request.base_url)
    return {
        "data": [job_view(j, b, base) for j in jobs[:limit]],
        "next_offset": offset + limit if len(jobs) > limit else None,
    }


@router.post("/jobs/{job_id}/cancel", response_model=Job)
async def cancel_job(request: Request, job_id: str, t: str = Depends(tenant), b: Backends = Depends(backends)):
    """Cancel: a queued job never starts; a running one stops at its next step. Terminal jobs stay as they are."""
    job = await run_in_threadpool(cancel_own, b, t, job_id)
    return job_view(job, b, str(request.base_url))


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
async def job_events(
    job_id: str,
    t: str = Depends(tenant),
    b: Backends = Depends(backends),
    last_event_id: int | None = Header(None, description="resume after this event id"),
):
    """Server-Sent Events: status and per-step progress, replayed from the start for a late subscriber."""
    await run_in_threadpool(own_job, b, t, job_id)
    start = 0 if last_event_id is None else last_event_id + 1

    async def stream():
        seq = start
        try:
            async with b.waiters.watch(t, job_id, held=True) as changed:
                while True:
                    changed.clear()
                    events = await run_in_threadpool(b.store.events.events, job_id, seq)
                    for e in events:
                        seq = e["seq"] + 1
                        yield f"id: {e['seq']}\nevent: {e['event']}\ndata: {json.dumps(e['data'])}\n\n"
                        if e["event"] == "status" and JobStatus(e["data"]["status"]).is_terminal():
                            return
                    if events or await wait_for(changed, KEEPALIVE_S):
                        continue
                    # nothing new for a while: end if the job is gone or finished (its log expired), else keep alive
                    job = await run_in_threadpool(b.store.jobs.get, job_id)
                    if job is None or job.status.is_terminal():
                        return
                    yield ": keep-alive\n\n"
        finally:
            release()

    # the stream's open wait is taken here, before it starts: past the tenant's cap a 429, never a stream that breaks
    # on its first read; released when the stream ends, or after the response when it never started
    release = b.waiters.take(t)
    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(release),
    )
