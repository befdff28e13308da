"""Text to video (diffusers video pipelines: Wan, CogVideoX, AnimateDiff)."""

from __future__ import annotations

from core.catalog import valid_num_frames
from core.errors import InputError
from core.registry import ModelEntry
from core.schemas import JobType, VideoRequest
from core.tasks.admission import Inputs, generation, updated
from core.tasks.base import Task


def frames(v: Inputs, entry: ModelEntry, request: VideoRequest) -> VideoRequest:
    """num_frames: the model's default, by its family's frame rule and its own cap."""
    n = request.num_frames if request.num_frames is not None else (entry.default_num_frames or 17)
    why = valid_num_frames(entry.pipeline_class, n)
    if why:
        raise InputError(why, field="num_frames")
    if entry.max_num_frames is not None and n > entry.max_num_frames:
        raise InputError(f"at most {entry.max_num_frames} for model {entry.id!r}", field="num_frames")
    return updated(request, num_frames=n)


TASK: Task[VideoRequest] = Task(
    type=JobType.video,
    request=VideoRequest,
    path="/video",
    name="video",
    summary="Queue a text-to-video job.",
    admit=lambda v, tenant, request, image_size: generation(v, tenant, TASK, request, image_size, extra=frames),
    limits="video",
    filled=("width", "height", "num_inference_steps", "guidance_scale", "scheduler", "seed", "timeout_s", "num_frames"),
)
