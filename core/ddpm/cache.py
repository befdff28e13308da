"""Step caching for the engine: reuse the denoiser's work between adjacent sampling steps where it changes little.

Two methods, one per network, each a stateful callable with the network's signature ``(x, t, y) -> output`` that
:func:`core.ddpm.samplers.sample` calls once per step (a new one per sampling run):

- :class:`DeepCache` (U-Net; Ma et al. 2024): a full pass every ``interval`` steps keeps the feature the U-Net's
  outermost up blocks take from its deeper ones; the steps between run only the outermost blocks on it. The decision
  is the step's index alone, the same for every image of a batch, so a batch of requests may share it.
- :class:`FirstBlockCache` (DiT; ParaAttention's First-Block Cache, as diffusers' ``FirstBlockCacheConfig``): the
  first transformer block always runs; when its residual moved by less than ``threshold`` (mean absolute difference
  over the mean absolute value) since the last full step, the other blocks' residual from that step is added
  instead of running them. The decision reads the batch's numbers, so a request with it runs alone.

At ``interval=1`` / ``threshold=0`` every step runs the full network with the same operations as ``forward``: the
output equals the uncached one exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from core.ddpm.dit import DiT
from core.ddpm.unet import UNet

DEEP_SKIP = 1  # DeepCache's branch: the up blocks rerun between full steps (1: the outermost, the most saved)


class StepCache:
    """What every method counts: denoiser calls, and those that reused the cache."""

    method = ""

    def __init__(self) -> None:
        self.calls = 0
        self.reused = 0

    @property
    def reused_fraction(self) -> float:
        return self.reused / self.calls if self.calls else 0.0

    def describe(self) -> str:
        """What the job records: the settings and what they did."""
        return f"{self.method} {self.setting}; reused {self.reused} of {self.calls} denoiser calls"

    @property
    def setting(self) -> str:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class DeepCache(StepCache):
    method = "deep"

    def __init__(self, net: UNet, interval: int, skip: int = DEEP_SKIP):
        super().__init__()
        if interval < 1:
            raise ValueError(f"interval: must be at least 1, got {interval}")
        self.net, self.interval, self.skip = net, int(interval), skip
        self._deep: torch.Tensor | None = None

    @property
    def setting(self) -> str:
        return f"interval={self.interval}"

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        # 1. a full pass on every interval-th step (the first included), else the shallow one on the kept feature
        full = self._deep is None or self.calls % self.interval == 0
        if self.interval == 1:  # nothing is ever reused: the network's own forward, the same operations
            out = self.net(x, t, y)
        else:
            out, deep = self.net.forward_deep(x, t, y, self.skip, None if full else self._deep)
            self._deep = deep
        self.calls += 1
        self.reused += not full
        return out


class FirstBlockCache(StepCache):
    method = "first_block"

    def __init__(self, net: DiT, threshold: float):
        super().__init__()
        if threshold < 0:
            raise ValueError(f"threshold: must be at least 0, got {threshold}")
        self.net, self.threshold = net, float(threshold)
        self._head_residual: torch.Tensor | None = None  # the first block's residual at the last full step
        self._tail_residual: torch.Tensor | None = None  # the other blocks' residual at the last full step

    @property
    def setting(self) -> str:
        return f"threshold={self.threshold:g}"

    def _changed(self, residual: torch.Tensor) -> bool:
        """Whether the first block's residual moved by more than the threshold since the last full step."""
        prev = self._head_residual
        if self.threshold <= 0 or prev is None or prev.shape != residual.shape:
            return True
        change = (residual - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12)
        return bool(change > self.threshold)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        net = self.net
        h, cond = net.tokens(x, t, y)
        # 1. the first block always runs
        first = net.blocks[0](h, cond)
        residual = first - h
        # 2. the other blocks run when it moved, else their last residual is added
        full = self._changed(residual)
        if full:
            h = first
            for block in net.blocks[1:]:
                h = block(h, cond)
            self._head_residual, self._tail_residual = residual, h - first
        else:
            h = first + self._tail_residual
        self.calls += 1
        self.reused += not full
        return net.head(h, cond)


def make_step_cache(net: nn.Module, method: str, value: float) -> StepCache:
    """The step cache ``method`` (``deep`` or ``first_block``) with its knob ``value`` for this network (a compiled
    module is cached through the module it wraps)."""
    net = getattr(net, "_orig_mod", net)
    if method == "deep" and isinstance(net, UNet):
        return DeepCache(net, int(value))
    if method == "first_block" and isinstance(net, DiT):
        return FirstBlockCache(net, float(value))
    raise ValueError(f"cache: the engine's {type(net).__name__} takes no {method!r} step cache")
