"""The diffusion processes: forward noising, prediction targets and training losses.

The process takes the network as an argument; it never wraps it.

- :class:`GaussianDiffusion`: DDPM with an epsilon, x0 (``sample``) or v (``v_prediction``) target.
- :class:`FlowMatching`: rectified flow, x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from core.ddpm.schedules import NoiseSchedule, extract

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# The network sees flow time t in [0, 1] scaled to the same range as the discrete timesteps.
FLOW_TIME_SCALE = 1000.0


def add_noise(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) in one jump (DDPM eq. 4): sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. Shapes (B, ...)."""
    a = extract(schedule.sqrt_alphas_cumprod.to(x0.device), t, x0.ndim).to(x0.dtype)
    s = extract(schedule.sqrt_one_minus_alphas_cumprod.to(x0.device), t, x0.ndim).to(x0.dtype)
    return a * x0 + s * noise


def velocity(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, progressive distillation)."""
    a = extract(schedule.sqrt_alphas_cumprod.to(x0.device), t, x0.ndim).to(x0.dtype)
    s = extract(schedule.sqrt_one_minus_alphas_cumprod.to(x0.device), t, x0.ndim).to(x0.dtype)
    return a * noise - s * x0


def x0_and_eps(
    model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert any prediction target to (x0, eps) given abar_t (a scalar or broadcastable to x_t):
    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (DDPM eq. 4), v = sqrt(abar) eps - sqrt(1 - abar) x0. The one
    conversion used by training tests and every sampler."""
    a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        return (x_t - s * model_output) / a, model_output
    if prediction_type == "sample":
        return model_output, (x_t - a * model_output) / s
    if prediction_type == "v_prediction":
        return a * x_t - s * model_output, a * model_output + s * x_t
    raise ValueError(f"prediction_type: unknown {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def predict_x0_and_eps(
    schedule: NoiseSchedule, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`x0_and_eps` at per-sample timesteps ``t`` (B,)."""
    abar = extract(schedule.alphas_cumprod.to(x_t.device), t, x_t.ndim).to(x_t.dtype)
    return x0_and_eps(model_output, x_t, abar, prediction_type)


Model = Callable[..., torch.Tensor]


class GaussianDiffusion:
    """DDPM training objective: the simple (unweighted MSE) loss on the chosen prediction target."""

    kind = "ddpm"

    def __init__(self, schedule: NoiseSchedule, prediction_type: str = "epsilon"):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type: unknown {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.schedule = schedule
        self.prediction_type = prediction_type

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        return velocity(self.schedule, x0, noise, t)

    def loss(
        self, model: Model, x0: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sample t ~ U{0..T-1} and eps ~ N(0, I), return the mean squared error of the model's prediction."""
        b = x0.shape[0]
        t = torch.randint(0, self.schedule.num_train_timesteps, (b,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        x_t = add_noise(self.schedule, x0, noise, t)
        out = model(x_t, t, y)
        return F.mse_loss(out.float(), self.target(x0, noise, t).float())

    def config(self) -> dict:
        return {
            "kind": "ddpm",
            "num_train_timesteps": self.schedule.num_train_timesteps,
            "beta_schedule": self.schedule.beta_schedule,
            "prediction_type": self.prediction_type,
        }


class FlowMatching:
    """Rectified flow (Liu et al. 2022; as in SD3 and Flux): x_t = (1 - t) x0 + t eps, target v = eps - x0."""

    kind = "flow"
    prediction_type = "flow"

    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return (1 - t) * x0 + t * noise

    def loss(
        self, model: Model, x0: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        b = x0.shape[0]
        t = torch.rand((b,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        x_t = self.interpolate(x0, noise, t)
        out = model(x_t, t * FLOW_TIME_SCALE, y)
        return F.mse_loss(out.float(), (noise - x0).float())

    def config(self) -> dict:
        return {"kind": "flow", "prediction_type": "flow"}


def make_objective(config: dict) -> GaussianDiffusion | FlowMatching:
    """Build the training objective from a scheduler config (``kind`` = ``ddpm`` | ``flow``)."""
    kind = config.get("kind", "ddpm")
    if kind == "flow":
        return FlowMatching()
    if kind == "ddpm":
        schedule = NoiseSchedule(config.get("beta_schedule", "linear"), int(config.get("num_train_timesteps", 1000)))
        return GaussianDiffusion(schedule, config.get("prediction_type", "epsilon"))
    raise ValueError(f"kind: unknown objective {kind!r}; expected 'ddpm' or 'flow'")
