"""diffuserve's from-scratch diffusion engine: schedules, U-Net, training, DDPM/DDIM/flow samplers.

Pure PyTorch; imports nothing from diffusers. Names load lazily, so torch-free parts (``core.ddpm.labels``)
can be imported without torch.
"""

from importlib import import_module

_EXPORTS = {
    "DDPMEngineModel": "pipeline",
    "FlowMatching": "process",
    "GaussianDiffusion": "process",
    "add_noise": "process",
    "make_objective": "process",
    "DDIMScheduler": "samplers",
    "DDPMScheduler": "samplers",
    "FlowEulerScheduler": "samplers",
    "make_scheduler": "samplers",
    "sample": "samplers",
    "NoiseSchedule": "schedules",
    "get_beta_schedule": "schedules",
    "TrainConfig": "training",
    "TrainingCancelled": "training",
    "train": "training",
    "DiT": "dit",
    "DiTConfig": "dit",
    "UNet": "unet",
    "UNetConfig": "unet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"core.ddpm.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
