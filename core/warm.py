"""A worker's warm resources: what an executor may use (``Executor.run(request, model, ctx, warm)``). Models load
once per process and stay warm (one memory-budgeted LRU for engine models and diffusers pipelines alike); the
diffusers side is created on first use, so a worker serving only the engine never imports diffusers."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from core.catalog import ModelKind
from core.registry import ModelEntry, ModelRegistry

if TYPE_CHECKING:
    from core.ddpm.pipeline import DDPMEngineModel
    from core.pipelines.fastpath import FastPath
    from core.pipelines.loader import Pipelines


def versions() -> dict[str, str]:
    import torch

    from core import __version__

    v = {"diffuserve": __version__, "torch": torch.__version__}
    try:
        import diffusers

        v["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover - diffusers is a dependency
        pass
    return v


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_budget(device: str) -> int:
    """Memory the pipeline cache may hold: 80% of the GPU's memory, or half of the RAM on CPU."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory * 0.8)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)


class Warm:
    """The device, the model cache, the engine's models and the diffusers pipelines (``pipelines``), the fast path
    and the versions every result records."""

    def __init__(
        self,
        registry: ModelRegistry,
        device: str | None = None,
        torch_threads: int = 0,
        pipeline_budget_bytes: int | None = None,
        cache_dir: str | Path | None = None,
        on_load: Callable[[str, float], None] | None = None,
        fast: FastPath | None = None,
        max_models: int | None = None,
        demand: Callable[[str], float] | None = None,
    ):
        import torch

        from core.pipelines.cache import PipelineCache
        from core.pipelines.fastpath import FastPath

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.registry = registry
        self.device: str = device or default_device()
        self.versions: dict[str, str] = versions()
        self.cache = PipelineCache(
            pipeline_budget_bytes or default_budget(self.device),
            on_load=(lambda key, ms: on_load(key[1], ms)) if on_load else None,  # key: (kind, model id, version)
            max_models=max_models,
            demand=demand,
        )
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "diffuserve-cache"
        self.fast: FastPath = fast or FastPath.for_device(self.device, cache_dir=self.cache_dir / "inductor-cache")
        self._pipelines: Pipelines | None = None

    @property
    def pipelines(self) -> Pipelines:
        """The diffusers side, created on first use (importing diffusers only when a pipeline is served)."""
        if self._pipelines is None:
            from core.pipelines.loader import Pipelines

            self._pipelines = Pipelines(self.registry, self.device, self.cache, self.fast)
        return self._pipelines

    def load_engine(self, entry: ModelEntry) -> tuple[DDPMEngineModel, float]:
        """(model, load_ms) of one of our engine's models: 0 ms on a warm hit."""
        from core.ddpm.pipeline import DDPMEngineModel

        return self.cache.get(
            ("engine", entry.id, entry.version), lambda: DDPMEngineModel.from_pretrained(entry.path, device=self.device)
        )

    def warm_up(self, model_ids: list[str]) -> None:
        for mid in model_ids:
            try:
                entry = self.registry.get(mid)
            except ValueError:
                continue
            if entry.kind == ModelKind.engine:
                self.load_engine(entry)
            else:
                self.pipelines.warm(entry)
