"""The job types the service runs, one :class:`Task` each (``core/tasks/<type>.py``), and the one registry of them.

Adding a job type: its request model and ``JobType`` member (``core/schemas.py``), its module here and a row in
``TASKS``, its executor and a row in the worker's table (``core/executors/__init__.py``). The routes, admission,
the queue choice, the worker's parse, grids and both compatibility adapters read ``TASKS``.
"""

from __future__ import annotations

from core.registry import ModelEntry
from core.schemas import JobType
from core.tasks import controlnet, ddpm_training, grid, img2img, inpaint, lora_training, txt2img, video
from core.tasks.base import Admitted, Task

TASKS: dict[JobType, Task] = {
    t.type: t
    for t in (
        txt2img.TASK,
        img2img.TASK,
        inpaint.TASK,
        controlnet.TASK,
        video.TASK,
        lora_training.TASK,
        ddpm_training.TASK,
        grid.TASK,
    )
}

# the tasks an untyped request (an adapter's: Replicate's ``input``, A1111's payload) may be, most specific first
INFERABLE = (JobType.controlnet, JobType.inpaint, JobType.img2img, JobType.txt2img, JobType.video)


def infer(given: set[str], entry: ModelEntry | None = None) -> Task:
    """The task an untyped request for ``entry`` is: the first whose marks (fields) were given, else the first task
    without marks the model does (txt2img, or video for a video model). Admission then refuses a task the model
    does not do (``unsupported_task``)."""
    for job_type in INFERABLE:
        task = TASKS[job_type]
        if task.marks and given & set(task.marks):
            return task
    plain = [t for t in INFERABLE if not TASKS[t].marks and entry is not None and t.value in entry.tasks]
    return TASKS[plain[0] if plain else JobType.txt2img]


__all__ = ["TASKS", "Admitted", "Task", "infer"]
