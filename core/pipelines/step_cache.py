"""Step caching for diffusers pipelines, through diffusers' own cache hooks on the transformer denoiser
(``enable_cache`` with ``FirstBlockCacheConfig``, ``TaylorSeerCacheConfig`` or ``MagCacheConfig``), for one call.

The hooks are enabled on the warm pipeline's shared transformer for the request and always disabled after it, so
no other request sees them. What was reused is counted by a hook of our own registered *under* diffusers' (the
innermost wrapper of a probe module: it runs only when the cache lets that module compute), against the
transformer's calls. ``threshold=0`` / ``interval=1`` enable nothing: the call is the uncached one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from core.schemas import StepCache

COUNTER_HOOK = "diffuserve_step_counter"
# the module whose computing tells a reused step: the last transformer block (First-Block Cache and MagCache skip
# whole blocks) or the last attention TaylorSeer predicts
PROBES = {
    "first_block": re.compile(r"[^.]*blocks\.\d+"),
    "mag": re.compile(r"[^.]*blocks\.\d+"),
    "taylorseer": re.compile(r"(blocks|(single_|temporal_)?transformer_blocks).*attn"),
}


class Counted:
    """The denoiser's calls and the probe's computations during one call."""

    def __init__(self, cache: StepCache):
        self.cache = cache
        self.calls = 0
        self.computed = 0

    @property
    def reused(self) -> int:
        return max(self.calls - self.computed, 0)

    def describe(self) -> str:
        return f"{self.cache.describe()}; reused {self.reused} of {self.calls} denoiser calls"


def config_for(cache: StepCache, steps: int):
    """diffusers' config object for ``cache``; None when it would reuse nothing (threshold 0, interval 1)."""
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    value = cache.value
    if (cache.method in ("first_block", "mag") and not value) or (cache.method == "taylorseer" and value == 1):
        return None
    if cache.method == "first_block":
        return FirstBlockCacheConfig(threshold=float(value))
    if cache.method == "taylorseer":
        return TaylorSeerCacheConfig(cache_interval=int(value), taylor_factors_dtype=torch.float32)
    if cache.method == "mag":
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        return MagCacheConfig(threshold=float(value), num_inference_steps=steps, mag_ratios=FLUX_MAG_RATIOS)
    raise ValueError(f"cache: no diffusers hook for {cache.method!r}")


def _probe(denoiser: torch.nn.Module, method: str) -> torch.nn.Module:
    names = [name for name, _ in denoiser.named_modules() if PROBES[method].fullmatch(name)]
    if not names:
        raise ValueError(f"cache: {type(denoiser).__name__} has no block {method!r} can skip")
    return denoiser.get_submodule(names[-1])


def _blocks(denoiser: torch.nn.Module) -> int:
    return sum(1 for name, _ in denoiser.named_modules() if PROBES["first_block"].fullmatch(name))


@contextmanager
def step_cache(pipe, cache: StepCache | None, steps: int) -> Iterator[Counted | None]:
    """``cache`` on ``pipe``'s transformer for the duration of one call; yields what it counts (None: no cache)."""
    if cache is None:
        yield None
        return
    from diffusers.hooks import HookRegistry, ModelHook

    denoiser = getattr(pipe, "transformer", None)
    if denoiser is None or not hasattr(denoiser, "enable_cache"):
        raise ValueError(f"cache: {type(pipe).__name__} has no transformer to cache")
    counted = Counted(cache)

    class Probe(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            counted.computed += 1
            return args, kwargs

    # 1. count: the denoiser's calls, and the probe's computations (registered first: the innermost wrapper)
    probe = _probe(denoiser, cache.method)
    probes = HookRegistry.check_if_exists_or_initialize(probe)
    probes.register_hook(Probe(), COUNTER_HOOK)
    calls = denoiser.register_forward_pre_hook(lambda *_: setattr(counted, "calls", counted.calls + 1))
    # 2. diffusers' hooks for this call only (a transformer of one block has nothing First-Block Cache could skip:
    # diffusers' hook would fail on it, so it runs uncached and says it reused nothing)
    config = config_for(cache, steps)
    if cache.method == "first_block" and _blocks(denoiser) < 2:
        config = None
    if config is not None:
        denoiser.enable_cache(config)
    try:
        yield counted
    finally:
        if config is not None:
            denoiser.disable_cache()
        calls.remove()
        probes.remove_hook(COUNTER_HOOK, recurse=False)
