"""The worker's table: what runs each task (``core/tasks``) on each kind of model, one :class:`Executor` per row,
imported as modules (one module per task; the trainers live in ``core/training``). Importing it imports torch;
diffusers loads when a pipeline is first served.

Every (type, kind) a Task lists in ``kinds`` has a row (``tests/core/test_tasks.py``).
"""

from __future__ import annotations

from core.catalog import ModelKind
from core.contract import Executor
from core.errors import JobError
from core.executors import controlnet, engine_txt2img, grid, img2img, inpaint, txt2img, video
from core.schemas import JobType
from core.training import ddpm_job, lora_job

# (job type, kind of the model that serves it, or None for a job that makes a new model) -> its executor
EXECUTORS: dict[tuple[JobType, ModelKind | None], Executor] = {
    (JobType.txt2img, ModelKind.engine): engine_txt2img.EXECUTOR,
    (JobType.txt2img, ModelKind.diffusers): txt2img.EXECUTOR,
    (JobType.img2img, ModelKind.diffusers): img2img.EXECUTOR,
    (JobType.inpaint, ModelKind.diffusers): inpaint.EXECUTOR,
    (JobType.controlnet, ModelKind.diffusers): controlnet.EXECUTOR,
    (JobType.video, ModelKind.diffusers): video.EXECUTOR,
    (JobType.lora_training, ModelKind.diffusers): lora_job.EXECUTOR,
    (JobType.ddpm_training, None): ddpm_job.EXECUTOR,
    (JobType.grid, ModelKind.engine): grid.for_cells(engine_txt2img.EXECUTOR),
    (JobType.grid, ModelKind.diffusers): grid.for_cells(txt2img.EXECUTOR),
}


def executor_for(job_type: JobType, kind: ModelKind | None) -> Executor:
    executor = EXECUTORS.get((job_type, kind))
    if executor is None:
        raise JobError(
            "unsupported_task", f"no executor for {job_type.value} on a {kind.value if kind else 'new'} model"
        )
    return executor
