"""The dispatch table: one executor per (model kind, job type), one module per task (the trainers live in
``core/training``).

Adding a task is one module with a ``run(request, model, ctx, engines)`` and one row here.
"""

from __future__ import annotations

import importlib

from core.catalog import ModelKind
from core.contract import Executor
from core.errors import JobError
from core.schemas import JobType

# (kind of the model that serves the job, or None for a job that makes a new model) -> the module whose ``run`` it is
EXECUTORS: dict[tuple[ModelKind | None, JobType], str] = {
    (ModelKind.engine, JobType.txt2img): "core.executors.engine_txt2img",
    (ModelKind.diffusers, JobType.txt2img): "core.executors.txt2img",
    (ModelKind.diffusers, JobType.img2img): "core.executors.img2img",
    (ModelKind.diffusers, JobType.inpaint): "core.executors.inpaint",
    (ModelKind.diffusers, JobType.controlnet): "core.executors.controlnet",
    (ModelKind.diffusers, JobType.video): "core.executors.video",
    (ModelKind.diffusers, JobType.lora_training): "core.training.lora_job",
    (None, JobType.ddpm_training): "core.training.ddpm_job",
    (ModelKind.engine, JobType.grid): "core.executors.grid",
    (ModelKind.diffusers, JobType.grid): "core.executors.grid",
}


def executor_module(kind: ModelKind | None, job_type: JobType):
    """The task's module (its ``run``, and ``batch_key``/``run_batch`` where it batches), imported on first use:
    torch and diffusers load with it."""
    module = EXECUTORS.get((kind, job_type))
    if module is None:
        raise JobError(
            "unsupported_task", f"no executor for {job_type.value} on a {kind.value if kind else 'new'} model"
        )
    return importlib.import_module(module)


def executor_for(kind: ModelKind | None, job_type: JobType) -> Executor:
    return executor_module(kind, job_type).run
