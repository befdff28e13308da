"""Job submissions: one POST per task (``core/tasks``: its path, name, summary and body model), each answering 202
with the job."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel

from api.deps import backends, tenant
from api.state import Backends
from api.submit import submit
from core.schemas import Job
from core.tasks import TASKS, Task

router = APIRouter()

PREFER_DOC = (
    "`wait` or `wait=N` (N ≤ 60 s; bare `wait`: 60): answer with the finished job (201, or 200 on an idempotent "
    "replay) when it ends within N seconds, else 202 with `Location` as without it. `Preference-Applied` echoes it."
)


def _endpoint(task: Task):
    async def endpoint(
        request: Request,
        body: BaseModel,
        t: str = Depends(tenant),
        b: Backends = Depends(backends),
        prefer: str | None = Header(None, description=PREFER_DOC, examples=["wait=30"]),
    ):
        return await submit(request, b, t, task, body)  # rate-limited there

    endpoint.__annotations__["body"] = task.request  # FastAPI validates the body against the task's own model
    endpoint.__doc__ = task.summary
    return endpoint


for _task in TASKS.values():
    router.add_api_route(
        _task.path,
        _endpoint(_task),
        methods=["POST"],
        name=_task.name,
        status_code=202,
        response_model=Job,
        responses={
            200: {"model": Job, "description": "`Prefer: wait` and an idempotent replay: the finished job"},
            201: {"model": Job, "description": "`Prefer: wait`: the job was created and finished within the wait"},
        },
    )
