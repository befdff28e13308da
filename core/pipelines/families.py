"""What each diffusers pipeline class can do (torch-free: the registry and the gateway read it)."""

from __future__ import annotations

from dataclasses import dataclass

# schedulers by request name -> (diffusers class, extra config)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
# flow-matching models take flow schedulers only
FLOW_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


@dataclass(frozen=True)
class Family:
    tasks: tuple[str, ...]
    default_size: tuple[int, int]  # (width, height) when the config does not tell
    flow: bool = False
    video: bool = False
    controlnet_class: str | None = None
    guidance: float = 7.5
    steps: int = 30


FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": Family(("txt2img", "img2img", "inpaint", "controlnet"), (512, 512),
                                      controlnet_class="StableDiffusionControlNetPipeline"),
    "StableDiffusionInpaintPipeline": Family(("inpaint",), (512, 512)),
    "StableDiffusionXLPipeline": Family(("txt2img", "img2img", "inpaint", "controlnet"), (1024, 1024),
                                        controlnet_class="StableDiffusionXLControlNetPipeline", guidance=5.0),
    "StableDiffusion3Pipeline": Family(("txt2img", "img2img", "inpaint"), (1024, 1024), flow=True, guidance=7.0, steps=28),
    "FluxPipeline": Family(("txt2img", "img2img", "inpaint"), (1024, 1024), flow=True, guidance=3.5, steps=28),
    "WanPipeline": Family(("video",), (832, 480), flow=True, video=True, guidance=5.0, steps=30),
    "CogVideoXPipeline": Family(("video",), (720, 480), video=True, guidance=6.0, steps=50),
    "AnimateDiffPipeline": Family(("video",), (512, 512), video=True, guidance=7.5, steps=25),
}


def scheduler_names(family: Family) -> list[str]:
    return list(FLOW_SCHEDULERS) if family.flow else list(SCHEDULERS)


def valid_num_frames(pipeline_class: str, n: int) -> str | None:
    """None when ``n`` frames is valid for the pipeline, else why not."""
    if pipeline_class == "WanPipeline" and (n - 1) % 4:
        return "must be 4k+1 for Wan models (e.g. 17, 33, 81)"
    if pipeline_class == "CogVideoXPipeline" and ((n - 1) % 8 or n > 49):
        return "must be 8k+1 and at most 49 for CogVideoX models"
    if pipeline_class == "AnimateDiffPipeline" and n > 32:
        return "must be at most 32 for AnimateDiff models"
    return None


# base models whose LoRA training loop is implemented (core/training/lora_job.py)
LORA_TRAINABLE = ("StableDiffusionPipeline",)
# families whose pipelines load LoRA adapters per request
LORA_SERVABLE = ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionXLPipeline",
                 "StableDiffusion3Pipeline", "FluxPipeline")
