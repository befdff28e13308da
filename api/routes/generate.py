"""Generation jobs: one POST per task type, each answering 202 with the job."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

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
ACCEPTED = {"status_code": 202, "response_model": Job}


@router.post("/txt2img", **ACCEPTED)
async def txt2img(request: Request, body: Txt2ImgRequest, tenant: str = Depends(rate_limited), b: Backends = Depends(backends)):
    """Queue a text-to-image job (for a class-conditional engine model the prompt names the label)."""
    return await submit(request, b, tenant, JobType.txt2img, body)


@router.post("/img2img", **ACCEPTED)
async def img2img(request: Request, body: Img2ImgRequest, tenant: str = Depends(rate_limited), b: Backends = Depends(backends)):
    """Queue an image-to-image job."""
    return await submit(request, b, tenant, JobType.img2img, body)


@router.post("/inpaint", **ACCEPTED)
async def inpaint(request: Request, body: InpaintRequest, tenant: str = Depends(rate_limited), b: Backends = Depends(backends)):
    """Queue an inpainting job (white pixels of mask_image are repainted)."""
    return await submit(request, b, tenant, JobType.inpaint, body)


@router.post("/controlnet", **ACCEPTED)
async def controlnet(request: Request, body: ControlNetRequest, tenant: str = Depends(rate_limited), b: Backends = Depends(backends)):
    """Queue a ControlNet-conditioned generation job."""
    return await submit(request, b, tenant, JobType.controlnet, body)


@router.post("/video", **ACCEPTED)
async def video(request: Request, body: VideoRequest, tenant: str = Depends(rate_limited), b: Backends = Depends(backends)):
    """Queue a text-to-video job."""
    return await submit(request, b, tenant, JobType.video, body)


@router.post("/trainings/lora", **ACCEPTED)
async def train_lora(request: Request, body: LoraTrainingRequest, tenant: str = Depends(rate_limited), b: Backends = Depends(backends)):
    """Queue a LoRA fine-tuning job on an uploaded dataset."""
    return await submit(request, b, tenant, JobType.lora_training, body)


@router.post("/trainings/ddpm", **ACCEPTED)
async def train_ddpm(request: Request, body: DDPMTrainingRequest, tenant: str = Depends(rate_limited), b: Backends = Depends(backends)):
    """Queue a training job of the from-scratch engine."""
    return await submit(request, b, tenant, JobType.ddpm_training, body)
