"""diffuserve's from-scratch diffusion engine: schedules, U-Net, training, DDPM/DDIM/flow samplers.

Pure PyTorch; imports nothing from diffusers.
"""

from core.ddpm.pipeline import DDPMEngineModel, is_engine_model
from core.ddpm.process import FlowMatching, GaussianDiffusion, add_noise, make_objective
from core.ddpm.samplers import DDIMScheduler, DDPMScheduler, FlowEulerScheduler, make_scheduler, sample
from core.ddpm.schedules import NoiseSchedule, get_beta_schedule
from core.ddpm.training import TrainConfig, TrainingCancelled, train
from core.ddpm.unet import UNet, UNetConfig

__all__ = [
    "DDIMScheduler",
    "DDPMEngineModel",
    "DDPMScheduler",
    "FlowEulerScheduler",
    "FlowMatching",
    "GaussianDiffusion",
    "NoiseSchedule",
    "TrainConfig",
    "TrainingCancelled",
    "UNet",
    "UNetConfig",
    "add_noise",
    "get_beta_schedule",
    "is_engine_model",
    "make_objective",
    "make_scheduler",
    "sample",
    "train",
]
