"""Text to image: the engine's models (a class-conditional one's prompt names its label) and diffusers pipelines."""

from __future__ import annotations

from core.catalog import ModelKind
from core.schemas import JobType, Txt2ImgRequest
from core.tasks.admission import generation
from core.tasks.base import Task

TASK: Task[Txt2ImgRequest] = Task(
    type=JobType.txt2img,
    request=Txt2ImgRequest,
    path="/txt2img",
    name="txt2img",
    summary="Queue a text-to-image job (for a class-conditional engine model the prompt names the label).",
    admit=lambda v, tenant, request, image_size: generation(v, tenant, TASK, request, image_size),
    kinds=(ModelKind.engine, ModelKind.diffusers),
    filled=("width", "height", "num_inference_steps", "guidance_scale", "scheduler", "seed", "timeout_s"),
)
