"""The worker's engines, built from settings: the same for a Celery worker process and the embedded worker."""

from __future__ import annotations

import threading
from collections.abc import Callable

from core.registry import ModelRegistry
from core.settings import ServiceSettings


def build_engines(
    s: ServiceSettings,
    registry: ModelRegistry,
    on_load: Callable[[str, float], None] | None = None,
    demand: Callable[[str], float] | None = None,
):
    """A callable that makes the worker's Engines on first call (torch and diffusers load then, not at import);
    ``demand`` (queued jobs per model) decides which warm model goes when one must."""
    lock, holder = threading.Lock(), {}

    def engines():
        with lock:
            if "e" not in holder:
                from core.pipelines.fastpath import FastPath
                from core.runner import Engines
                from core.warm import default_device

                device = s.device or default_device()
                holder["e"] = Engines(
                    registry,
                    device=device,
                    torch_threads=s.torch_threads,
                    pipeline_budget_bytes=(s.pipeline_budget_mb or 0) * 2**20 or None,
                    cache_dir=s.data_dir / "cache",
                    on_load=on_load,
                    max_batch=s.max_batch,
                    max_warm_models=s.max_warm_models,
                    demand=demand,
                    fast=FastPath.for_device(
                        device,
                        enabled=s.fast_path,
                        compile=s.compile,
                        cuda_graphs=s.cuda_graphs,
                        vae_tiling_above_px=s.vae_tiling_above_px,
                        lora_max_rank=s.lora_max_rank,
                        cache_dir=s.data_dir / "inductor-cache",
                        compile_backend=s.compile_backend,
                    ),
                )
            return holder["e"]

    def warm_models() -> set[str]:
        """The models this worker holds warm now (none before its engines are built); the scheduler routes by it."""
        built = holder.get("e")
        return built.warm.cache.models() if built is not None else set()

    engines.warm_models = warm_models  # type: ignore[attr-defined]
    return engines
