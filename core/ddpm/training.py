"""The training loop: AdamW, linear warm-up, gradient clipping, EMA weights, class dropout for CFG, bf16 autocast
(always on CUDA; on the CPU with ``bf16=True``), resumable checkpoints, and a progress callback that can cancel."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core.ddpm.process import FlowMatching, GaussianDiffusion
from core.ddpm.unet import UNet


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    class_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 0  # 0: only at the end
    bf16: bool = False  # bf16 autocast on the CPU too (about 1.5x faster where the CPU has AVX512-BF16 or AMX)

    def __post_init__(self) -> None:
        checks = {
            "max_steps": self.max_steps >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "weight_decay": self.weight_decay >= 0,
            "grad_clip": self.grad_clip >= 0,
            "ema_decay": 0.0 <= self.ema_decay < 1.0,
            "class_dropout": 0.0 <= self.class_dropout <= 1.0,
            "checkpoint_every": self.checkpoint_every >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: out of range (got {getattr(self, name)!r})")


@dataclass
class TrainProgress:
    step: int
    max_steps: int
    loss: float
    images_per_s: float
    elapsed_s: float = 0.0  # training time so far, earlier runs of a resumed training included


class TrainingCancelled(Exception):
    """Raised when the progress callback returns False."""


class EMA:
    """Exponential moving average of the weights, with the usual warm-up of the decay."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def _lr_at(step: int, config: TrainConfig) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    return config.learning_rate


def train(
    model: UNet,
    objective: GaussianDiffusion | FlowMatching,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    config: TrainConfig,
    callback: Callable[[TrainProgress], bool | None] | None = None,
    state_path: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> EMA:
    """Train ``model`` in place on ``images`` (N, C, H, W) in [-1, 1] and return the EMA weights.

    ``state_path``: a file where the full training state (weights, EMA, optimizer, RNG, step) is saved
    every ``checkpoint_every`` steps and at the end; training resumes from it when it exists.
    ``callback`` is called after every step; returning False raises :class:`TrainingCancelled`.
    """
    device = torch.device(device)
    torch.manual_seed(config.seed)  # dropout and any other global randomness
    gen = torch.Generator().manual_seed(config.seed)  # batches, timesteps, noise, class dropout
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    ema = EMA(model, config.ema_decay)
    start, elapsed = 0, 0.0
    state_path = Path(state_path) if state_path else None
    if state_path and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)  # never a pickle from storage
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        elapsed = float(state.get("elapsed_s", 0.0))

    def save_state(step: int) -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "ema": ema.model.state_dict(),
                "optimizer": opt.state_dict(),
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "elapsed_s": elapsed,
                "config": asdict(config),
            },
            tmp,
        )
        tmp.replace(state_path)  # atomic: a crash never leaves half a checkpoint

    null = model.null_class
    n = images.shape[0]
    autocast = device.type == "cuda" or config.bf16
    t_last = time.perf_counter()
    for step in range(start, config.max_steps):
        idx = torch.randint(0, n, (config.batch_size,), generator=gen)
        x0 = images[idx].to(device)
        y = None
        if null is not None and labels is not None:
            y = labels[idx].clone()
            drop = torch.rand((config.batch_size,), generator=gen) < config.class_dropout
            y[drop] = null
            y = y.to(device)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, config)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = objective.loss(model, x0, y, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        ema.update(model, step)
        done = step + 1
        now = time.perf_counter()
        ips = config.batch_size / max(now - t_last, 1e-9)
        elapsed += now - t_last
        t_last = now
        if state_path and config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.max_steps:
            save_state(done)
        progress = TrainProgress(done, config.max_steps, float(loss.detach()), ips, elapsed)
        if callback is not None and callback(progress) is False:
            raise TrainingCancelled(f"training cancelled at step {done}")
    if state_path:
        save_state(config.max_steps)
    model.eval()
    return ema
