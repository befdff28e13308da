"""Inpainting: the white pixels of ``mask_image`` repainted (diffusers pipelines)."""

from __future__ import annotations

from core.schemas import InpaintRequest, JobType
from core.tasks.admission import check_strength, generation
from core.tasks.base import Task
from core.tasks.txt2img import TASK as TXT2IMG

TASK: Task[InpaintRequest] = Task(
    type=JobType.inpaint,
    request=InpaintRequest,
    path="/inpaint",
    name="inpaint",
    summary="Queue an inpainting job (white pixels of mask_image are repainted).",
    admit=lambda v, tenant, request, image_size: generation(
        v, tenant, TASK, request, image_size, extra=check_strength(TASK)
    ),
    images=("image", "mask_image"),
    marks=("mask_image",),
    filled=TXT2IMG.filled,
)
