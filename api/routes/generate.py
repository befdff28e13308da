"""Job submissions: one POST per job type, each answering 202 with the job."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel

from api.deps import backends, tenant
from api.state import Backends
from api.submit import submit
from core.contract import REQUEST_MODELS
from core.schemas import Job, JobType

router = APIRouter()

PREFER_DOC = (
    "`wait` or `wait=N` (N ≤ 60 s; bare `wait`: 60): answer with the finished job (201, or 200 on an idempotent "
    "replay) when it ends within N seconds, else 202 with `Location` as without it. `Preference-Applied` echoes it."
)

# (path, route name = operation id, job type, one-line description); the body is REQUEST_MODELS[job type]
ROUTES: list[tuple[str, str, JobType, str]] = [
    (
        "/txt2img",
        "txt2img",
        JobType.txt2img,
        "Queue a text-to-image job (for a class-conditional engine model the prompt names the label).",
    ),
    ("/img2img", "img2img", JobType.img2img, "Queue an image-to-image job."),
    ("/inpaint", "inpaint", JobType.inpaint, "Queue an inpainting job (white pixels of mask_image are repainted)."),
    ("/controlnet", "controlnet", JobType.controlnet, "Queue a ControlNet-conditioned generation job."),
    ("/video", "video", JobType.video, "Queue a text-to-video job."),
    ("/trainings/lora", "train_lora", JobType.lora_training, "Queue a LoRA fine-tuning job on an uploaded dataset."),
    ("/trainings/ddpm", "train_ddpm", JobType.ddpm_training, "Queue a training job of the from-scratch engine."),
    (
        "/grids",
        "grid",
        JobType.grid,
        "Queue a grid: a txt2img request over one or two axes (guidance_scale, scheduler, num_inference_steps, "
        "seed, lora_scale; at most 64 cells); outputs are each cell, then a labelled contact sheet.",
    ),
]


def _endpoint(job_type: JobType, model: type[BaseModel], doc: str):
    async def endpoint(
        request: Request,
        body: BaseModel,
        t: str = Depends(tenant),
        b: Backends = Depends(backends),
        prefer: str | None = Header(None, description=PREFER_DOC, examples=["wait=30"]),
    ):
        return await submit(request, b, t, job_type, body)  # rate-limited there

    endpoint.__annotations__["body"] = model  # FastAPI validates the body against the job type's own model
    endpoint.__doc__ = doc
    return endpoint


for _path, _name, _type, _doc in ROUTES:
    router.add_api_route(
        _path,
        _endpoint(_type, REQUEST_MODELS[_type], _doc),
        methods=["POST"],
        name=_name,
        status_code=202,
        response_model=Job,
        responses={
            200: {"model": Job, "description": "`Prefer: wait` and an idempotent replay: the finished job"},
            201: {"model": Job, "description": "`Prefer: wait`: the job was created and finished within the wait"},
        },
    )
