"""ControlNet: generation conditioned on a control image (edges, depth), preprocessed on the worker."""

from __future__ import annotations

from core.catalog import MODEL_PREPROCESSORS
from core.registry import ModelEntry
from core.schemas import ControlNetRequest, JobType
from core.tasks.admission import Inputs, generation
from core.tasks.base import Task
from core.tasks.txt2img import TASK as TXT2IMG


def check_controlnet(v: Inputs, entry: ModelEntry, request: ControlNetRequest) -> ControlNetRequest:
    """The ControlNet is installed and fits the model; a preprocessor that needs a model of its own is installed."""
    v.registry.controlnet(request.controlnet, entry)
    if request.preprocess in MODEL_PREPROCESSORS:
        v.registry.preprocessor(request.preprocess)
    return request


TASK: Task[ControlNetRequest] = Task(
    type=JobType.controlnet,
    request=ControlNetRequest,
    path="/controlnet",
    name="controlnet",
    summary="Queue a ControlNet-conditioned generation job.",
    admit=lambda v, tenant, request, image_size: generation(
        v, tenant, TASK, request, image_size, extra=check_controlnet
    ),
    images=("control_image",),
    marks=("control_image", "controlnet"),
    filled=TXT2IMG.filled,
)
