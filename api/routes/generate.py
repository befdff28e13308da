"""Job submissions: one POST per job type, each answering 202 with the job."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from api.deps import backends, rate_limited
from api.state import Backends
from api.submit import submit
from core.schemas import (
    ControlNetRequest,
    DDPMTrainingRequest,
    Img2ImgRequest,
    InpaintRequest,
    Job,
    JobType,
    LoraTrainingRequest,
    Txt2ImgRequest,
    VideoRequest,
)

router = APIRouter()

# (path, route name = operation id, job type, request model, one-line description)
ROUTES: list[tuple[str, str, JobType, type[BaseModel], str]] = [
    (
        "/txt2img",
        "txt2img",
        JobType.txt2img,
        Txt2ImgRequest,
        "Queue a text-to-image job (for a class-conditional engine model the prompt names the label).",
    ),
    ("/img2img", "img2img", JobType.img2img, Img2ImgRequest, "Queue an image-to-image job."),
    (
        "/inpaint",
        "inpaint",
        JobType.inpaint,
        InpaintRequest,
        "Queue an inpainting job (white pixels of mask_image are repainted).",
    ),
    (
        "/controlnet",
        "controlnet",
        JobType.controlnet,
        ControlNetRequest,
        "Queue a ControlNet-conditioned generation job.",
    ),
    ("/video", "video", JobType.video, VideoRequest, "Queue a text-to-video job."),
    (
        "/trainings/lora",
        "train_lora",
        JobType.lora_training,
        LoraTrainingRequest,
        "Queue a LoRA fine-tuning job on an uploaded dataset.",
    ),
    (
        "/trainings/ddpm",
        "train_ddpm",
        JobType.ddpm_training,
        DDPMTrainingRequest,
        "Queue a training job of the from-scratch engine.",
    ),
]


def _endpoint(job_type: JobType, model: type[BaseModel], doc: str):
    async def endpoint(
        request: Request, body: BaseModel, tenant: str = Depends(rate_limited), b: Backends = Depends(backends)
    ):
        return await submit(request, b, tenant, job_type, body)

    endpoint.__annotations__["body"] = model  # FastAPI validates the body against the job type's own model
    endpoint.__doc__ = doc
    return endpoint


for _path, _name, _type, _model, _doc in ROUTES:
    router.add_api_route(
        _path, _endpoint(_type, _model, _doc), methods=["POST"], name=_name, status_code=202, response_model=Job
    )
