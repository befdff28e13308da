"""Samplers for the engine, speaking diffusers' scheduler contract.

``set_timesteps(n)``, ``timesteps``, ``step(model_output, t, sample, generator=None)`` returning an object
with ``prev_sample`` and ``pred_original_sample``, and ``add_noise``, so a test can hold them against
``diffusers.DDPMScheduler`` / ``DDIMScheduler`` and either can drive either network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from core.ddpm.process import FLOW_TIME_SCALE, PREDICTION_TYPES, add_noise, x0_and_eps
from core.ddpm.schedules import NoiseSchedule

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "euler")  # euler: the flow-matching ODE sampler
TIMESTEP_SPACINGS = ("leading", "trailing")
VARIANCE_TYPES = ("fixed_small", "fixed_large")


@dataclass
class SchedulerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class _DiscreteScheduler:
    """Shared by DDPM and DDIM: the noise schedule, timestep spacing and the x0 prediction."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type: unknown {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing: unknown {timestep_spacing!r}; expected one of {TIMESTEP_SPACINGS}")
        self.schedule = NoiseSchedule(beta_schedule, num_train_timesteps)
        self.alphas_cumprod = self.schedule.alphas_cumprod
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.timestep_spacing = timestep_spacing
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        T = self.num_train_timesteps
        if not 1 <= num_inference_steps <= T:
            raise ValueError(f"num_inference_steps: must be in [1, {T}], got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        if self.timestep_spacing == "leading":
            ratio = T // num_inference_steps
            ts = (np.arange(0, num_inference_steps) * ratio).round()[::-1].astype(np.int64)
        else:  # trailing: always includes t = T - 1 (Lin et al. 2023, "Common diffusion noise schedules...")
            ts = np.round(np.arange(T, 0, -T / num_inference_steps)).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(ts.copy()).to(device)

    def _alpha(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)

    def _x0_eps(self, model_output: torch.Tensor, t: int, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0, eps = x0_and_eps(model_output, sample, self._alpha(t).to(sample.device, sample.dtype), self.prediction_type)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0, eps

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return add_noise(self.schedule, original_samples, noise, timesteps)

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    @property
    def config(self) -> dict:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.schedule.beta_schedule,
            "prediction_type": self.prediction_type,
            "clip_sample": self.clip_sample,
            "clip_sample_range": self.clip_sample_range,
            "timestep_spacing": self.timestep_spacing,
        }


class DDPMScheduler(_DiscreteScheduler):
    """Ancestral sampling (DDPM eq. 6-7) with the fixed-small (beta tilde) or fixed-large (beta) variance."""

    def __init__(self, *args, variance_type: str = "fixed_small", **kwargs):
        super().__init__(*args, **kwargs)
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type: unknown {variance_type!r}; expected one of {VARIANCE_TYPES}")
        self.variance_type = variance_type

    def previous_timestep(self, t: int) -> int:
        if self.num_inference_steps is None:
            return t - 1
        ts = self.timesteps.tolist()
        i = ts.index(t)
        return ts[i + 1] if i + 1 < len(ts) else -1

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        a_t = self._alpha(t).to(sample.device, sample.dtype)
        a_prev = self._alpha(prev_t).to(sample.device, sample.dtype)
        cur_alpha = a_t / a_prev
        cur_beta = 1 - cur_alpha
        # DDPM eq. 15: predicted x0
        x0, _ = self._x0_eps(model_output, t, sample)
        # DDPM eq. 7: posterior mean mu_tilde(x_t, x0)
        coef_x0 = a_prev**0.5 * cur_beta / (1 - a_t)
        coef_xt = cur_alpha**0.5 * (1 - a_prev) / (1 - a_t)
        prev = coef_x0 * x0 + coef_xt * sample
        if t > 0:
            noise = torch.randn(model_output.shape, generator=generator, dtype=model_output.dtype).to(sample.device)
            if self.variance_type == "fixed_small":
                var = torch.clamp((1 - a_prev) / (1 - a_t) * cur_beta, min=1e-20)  # beta tilde
            else:
                var = cur_beta
            prev = prev + var**0.5 * noise
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    @property
    def config(self) -> dict:
        return {**super().config, "variance_type": self.variance_type}


class DDIMScheduler(_DiscreteScheduler):
    """DDIM (Song et al. 2021) with ``eta``: 0 is deterministic, 1 matches DDPM's posterior variance."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        use_clipped_model_output: bool = False,
    ) -> SchedulerOutput:
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps: call set_timesteps before step")
        t = int(timestep)
        prev_t = t - self.num_train_timesteps // self.num_inference_steps
        a_t = self._alpha(t).to(sample.device, sample.dtype)
        a_prev = self._alpha(prev_t).to(sample.device, sample.dtype)
        # DDIM eq. 12: predicted x0, then the direction pointing to x_t
        x0, eps = self._x0_eps(model_output, t, sample)
        if use_clipped_model_output:
            # eps consistent with the clipped x0 (as improved-diffusion's DDIM does): keeps guided samples in range
            eps = (sample - a_t**0.5 * x0) / (1 - a_t) ** 0.5
        # DDIM eq. 16: sigma_t(eta)
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = eta * variance**0.5
        direction = (1 - a_prev - std**2) ** 0.5 * eps
        prev = a_prev**0.5 * x0 + direction
        if eta > 0:
            noise = torch.randn(model_output.shape, generator=generator, dtype=model_output.dtype).to(sample.device)
            prev = prev + std * noise
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)


class DPMSolverPP2MScheduler(_DiscreteScheduler):
    """DPM-Solver++ (2M): the multistep second-order solver of the diffusion ODE in data (x0) prediction (Lu et al.
    2022, "DPM-Solver++"), with diffusers' conventions: ``linspace`` timesteps, sigmas interpolated, a final sigma
    of 0 taken with a first-order step, and the midpoint form of the second-order update. Held against diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)`` to 1e-5 (tests/core/ddpm).
    ``use_karras_sigmas`` spaces the sigmas as Karras et al. (2022), rho 7."""

    def __init__(self, *args, use_karras_sigmas: bool = False, **kwargs):
        kwargs.setdefault("timestep_spacing", "leading")
        super().__init__(*args, **kwargs)
        self.use_karras_sigmas = use_karras_sigmas
        self.sigmas = torch.zeros(1)
        self._outputs: list[torch.Tensor] = []
        self._step_index = 0

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        T = self.num_train_timesteps
        if not 1 <= num_inference_steps <= T:
            raise ValueError(f"num_inference_steps: must be in [1, {T}], got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        ac = self.alphas_cumprod.float()
        all_sigmas = (((1 - ac) / ac) ** 0.5).numpy()  # in float32, as diffusers computes them
        if self.use_karras_sigmas:
            rho, lo, hi = 7.0, all_sigmas[0], all_sigmas[-1]
            ramp = np.linspace(0, 1, num_inference_steps)
            sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
            log_sigmas = np.log(all_sigmas)
            ts = np.array([np.interp(np.log(sg), log_sigmas, np.arange(T)) for sg in sigmas]).round().astype(np.int64)
        else:
            ts = np.linspace(0, T - 1, num_inference_steps + 1).round()[::-1][:-1].copy().astype(np.int64)
            sigmas = np.interp(ts, np.arange(T), all_sigmas)
        self.timesteps = torch.from_numpy(ts).to(device)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]])).to(torch.float32)
        self._outputs = []
        self._step_index = 0

    @staticmethod
    def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = 1 / (sigma**2 + 1) ** 0.5
        return alpha, sigma * alpha

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps: call set_timesteps before step")
        i = self._step_index
        # 1. the model's output as a data (x0) prediction at this sigma
        alpha_s, sigma_s = self._alpha_sigma(self.sigmas[i])
        alpha_s, sigma_s = alpha_s.to(sample.device, sample.dtype), sigma_s.to(sample.device, sample.dtype)
        if self.prediction_type == "epsilon":
            x0 = (sample - sigma_s * model_output) / alpha_s
        elif self.prediction_type == "v_prediction":
            x0 = alpha_s * sample - sigma_s * model_output
        else:  # sample
            x0 = model_output
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        self._outputs = [*self._outputs[-1:], x0]
        # 2. to the next sigma: first order at the first and the last step, the 2M multistep update between
        alpha_t, sigma_t = (v.to(sample.device, sample.dtype) for v in self._alpha_sigma(self.sigmas[i + 1]))
        lam_t = torch.log(alpha_t) - torch.log(sigma_t)
        lam_s = torch.log(alpha_s) - torch.log(sigma_s)
        h = lam_t - lam_s
        last = i == len(self.timesteps) - 1
        if len(self._outputs) < 2 or last:
            prev = (sigma_t / sigma_s) * sample - alpha_t * torch.expm1(-h) * x0
        else:
            alpha_p, sigma_p = (v.to(sample.device, sample.dtype) for v in self._alpha_sigma(self.sigmas[i - 1]))
            r0 = (lam_s - (torch.log(alpha_p) - torch.log(sigma_p))) / h
            d0, d1 = self._outputs[-1], (self._outputs[-1] - self._outputs[-2]) / r0
            prev = (sigma_t / sigma_s) * sample - alpha_t * torch.expm1(-h) * d0 - 0.5 * alpha_t * torch.expm1(-h) * d1
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    @property
    def config(self) -> dict:
        return {**super().config, "use_karras_sigmas": self.use_karras_sigmas}


class FlowEulerScheduler:
    """Euler solver of the rectified-flow ODE dx/dt = v(x, t), from t = 1 (noise) to t = 0 (data)."""

    init_noise_sigma = 1.0
    prediction_type = "flow"

    def __init__(self, clip_sample: bool = True, clip_sample_range: float = 1.0):
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.num_inference_steps: int | None = None
        self.sigmas = torch.tensor([1.0, 0.0])
        self.timesteps = self.sigmas[:-1] * FLOW_TIME_SCALE

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: must be positive, got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        self.sigmas = torch.linspace(1.0, 0.0, num_inference_steps + 1)
        self.timesteps = (self.sigmas[:-1] * FLOW_TIME_SCALE).to(device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        i = int(torch.argmin((self.timesteps.cpu() - float(timestep)).abs()))
        s, s_next = self.sigmas[i].item(), self.sigmas[i + 1].item()
        x0 = sample - s * model_output  # x_t = x0 + t v  =>  x0 = x_t - t v
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        prev = sample + (s_next - s) * model_output
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        t = (torch.as_tensor(timesteps, dtype=original_samples.dtype) / FLOW_TIME_SCALE).reshape(-1, 1, 1, 1)
        return (1 - t) * original_samples + t * noise

    @property
    def config(self) -> dict:
        return {"kind": "flow", "clip_sample": self.clip_sample, "clip_sample_range": self.clip_sample_range}


def make_scheduler(
    sampler: str, scheduler_config: dict, **overrides
) -> DDPMScheduler | DDIMScheduler | FlowEulerScheduler:
    """Named factory: ``ddpm`` | ``ddim`` | ``dpmpp_2m`` | ``dpmpp_2m_karras`` for a DDPM-trained model, ``euler``
    for a flow-matching one."""
    kind = scheduler_config.get("kind", "ddpm")
    if sampler not in SAMPLERS:
        raise ValueError(f"scheduler: unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if (kind == "flow") != (sampler == "euler"):
        ok = "euler" if kind == "flow" else "ddpm, ddim or dpmpp_2m"
        raise ValueError(f"scheduler: {sampler!r} does not fit a {kind} model; use {ok}")
    if sampler == "euler":
        return FlowEulerScheduler(**overrides)
    args = {
        "num_train_timesteps": int(scheduler_config.get("num_train_timesteps", 1000)),
        "beta_schedule": scheduler_config.get("beta_schedule", "linear"),
        "prediction_type": scheduler_config.get("prediction_type", "epsilon"),
    }
    args.update(overrides)
    if sampler.startswith("dpmpp_2m"):
        return DPMSolverPP2MScheduler(**args, use_karras_sigmas=sampler.endswith("karras"))
    return DDPMScheduler(**args) if sampler == "ddpm" else DDIMScheduler(**args)


class Cancelled(Exception):
    """Raised by :func:`sample` when the progress callback returns False."""


@torch.no_grad()
def sample(
    model: Callable[..., torch.Tensor],
    scheduler: DDPMScheduler | DDIMScheduler | FlowEulerScheduler,
    shape: tuple[int, ...],
    num_inference_steps: int,
    labels: torch.Tensor | None = None,
    null_class: int | None = None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    callback: Callable[[int, int], bool | None] | None = None,
    noise: torch.Tensor | None = None,
    use_clipped_model_output: bool = True,
    preview: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the reverse process and return x_0 of ``shape`` (B, C, H, W).

    Classifier-free guidance (Ho & Salimans 2022): eps = eps_uncond + s (eps_cond - eps_uncond), the
    unconditional branch using the learned ``null_class``. ``callback(step, total)`` after every step;
    returning False raises :class:`Cancelled`; ``preview(step, total, x0)`` after it with the step's predicted x0
    (what a step preview shows, at no extra model call). ``use_clipped_model_output`` (DDIM): take the DDIM
    direction from the eps that agrees with the clipped x0, as improved-diffusion does; without it guidance above
    ~2 drives samples out of range and they collapse (bench/ddpm_quality.py measured it).
    """
    device = torch.device(device)
    scheduler.set_timesteps(num_inference_steps)
    x = noise if noise is not None else torch.randn(shape, generator=generator)
    x = (x * scheduler.init_noise_sigma).to(device)
    guided = labels is not None and null_class is not None and guidance_scale != 1.0
    if labels is not None:
        labels = labels.to(device)
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, null_class)])
    total = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        x_in = torch.cat([x, x]) if guided else x
        tt = torch.full((x_in.shape[0],), float(t), device=device)
        out = model(x_in, tt, labels)
        if guided:
            cond, uncond = out.chunk(2)
            out = uncond + guidance_scale * (cond - uncond)
        if isinstance(scheduler, DDIMScheduler):
            stepped = scheduler.step(
                out, t, x, eta=eta, generator=generator, use_clipped_model_output=use_clipped_model_output
            )
        else:
            stepped = scheduler.step(out, t, x, generator=generator)
        x = stepped.prev_sample
        if callback is not None and callback(i + 1, total) is False:
            raise Cancelled(f"sampling cancelled at step {i + 1}")
        if preview is not None:
            preview(i + 1, total, stepped.pred_original_sample)
    return x.clamp(-1, 1)
