"""Image to image: the input image noised to ``strength`` and denoised again (diffusers pipelines)."""

from __future__ import annotations

from core.schemas import Img2ImgRequest, JobType
from core.tasks.admission import check_strength, generation
from core.tasks.base import Task
from core.tasks.txt2img import TASK as TXT2IMG

TASK: Task[Img2ImgRequest] = Task(
    type=JobType.img2img,
    request=Img2ImgRequest,
    path="/img2img",
    name="img2img",
    summary="Queue an image-to-image job.",
    admit=lambda v, tenant, request, image_size: generation(
        v, tenant, TASK, request, image_size, extra=check_strength(TASK)
    ),
    images=("image",),
    marks=("image",),
    filled=TXT2IMG.filled,
)
