"""Noise schedules for Gaussian diffusion (DDPM, Ho et al. 2020; improved DDPM, Nichol & Dhariwal 2021).

Every table is computed in float64 and stored as float32 tensors, named as in the papers.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "cosine", "scaled_linear")


def _cosine_alpha_bar(t: float, s: float = 0.008) -> float:
    # Improved DDPM eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2)
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def get_beta_schedule(
    name: str,
    num_train_timesteps: int,
    beta_start: float | None = None,
    beta_end: float | None = None,
    max_beta: float = 0.999,
) -> np.ndarray:
    """Return the betas of a named schedule as a float64 array of shape (T,).

    - ``linear``: DDPM's linear schedule, 1e-4 -> 0.02 (or beta_start -> beta_end).
    - ``cosine``: improved DDPM's cosine schedule (s = 0.008), betas clipped at ``max_beta``.
    - ``scaled_linear``: Stable Diffusion's schedule, linear in sqrt(beta), 0.00085 -> 0.012.
    """
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}")
    T = num_train_timesteps
    if name == "linear":
        start = 1e-4 if beta_start is None else beta_start
        end = 0.02 if beta_end is None else beta_end
        return np.linspace(start, end, T, dtype=np.float64)
    if name == "scaled_linear":
        start = 0.00085 if beta_start is None else beta_start
        end = 0.012 if beta_end is None else beta_end
        return np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2
    if name == "cosine":
        betas = [min(1 - _cosine_alpha_bar((i + 1) / T) / _cosine_alpha_bar(i / T), max_beta) for i in range(T)]
        return np.asarray(betas, dtype=np.float64)
    raise ValueError(f"beta_schedule: unknown schedule {name!r}; expected one of {BETA_SCHEDULES}")


# diffusers' names for the same schedules, so configs can be exchanged both ways.
DIFFUSERS_SCHEDULE_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "scaled_linear": "scaled_linear"}


class NoiseSchedule:
    """The fixed forward process q(x_t | x_0) and the posterior q(x_{t-1} | x_t, x_0) of a beta schedule.

    Buffers (all float32, shape (T,)): ``betas``, ``alphas``, ``alphas_cumprod``, ``alphas_cumprod_prev``,
    ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``, ``posterior_variance``,
    ``posterior_log_variance_clipped``, ``posterior_mean_coef1``, ``posterior_mean_coef2``.
    """

    def __init__(self, beta_schedule: str = "linear", num_train_timesteps: int = 1000):
        self.beta_schedule = beta_schedule
        self.num_train_timesteps = num_train_timesteps
        betas = get_beta_schedule(beta_schedule, num_train_timesteps)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        # DDPM eq. 7: posterior variance beta_tilde_t and mean coefficients
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        posterior_mean_coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)

        def f32(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(a, dtype=np.float64)).to(torch.float32)

        self.betas = f32(betas)
        self.alphas = f32(alphas)
        self.alphas_cumprod = f32(alphas_cumprod)
        self.alphas_cumprod_prev = f32(alphas_cumprod_prev)
        self.sqrt_alphas_cumprod = f32(np.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = f32(np.sqrt(1.0 - alphas_cumprod))
        self.posterior_variance = f32(posterior_variance)
        self.posterior_log_variance_clipped = f32(posterior_log_variance_clipped)
        self.posterior_mean_coef1 = f32(posterior_mean_coef1)
        self.posterior_mean_coef2 = f32(posterior_mean_coef2)

    def __len__(self) -> int:
        return self.num_train_timesteps


def extract(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``table[t]`` for a batch of timesteps and shape it (B, 1, ..., 1) to broadcast on ``ndim`` dims."""
    t = torch.as_tensor(t, device=table.device).long().reshape(-1)
    out = table[t]
    return out.reshape(out.shape[0], *([1] * (ndim - 1)))
