"""A worker's warm resources: what an executor may use (``Executor.run(request, model, ctx, warm)``). Models load
once per process and stay warm (one memory-budgeted LRU for engine models and diffusers pipelines alike); the
diffusers side is created on first use, so a worker serving only the engine never imports diffusers.

Engine models are compiled (``core/ddpm/compile.py``) as they load when the fast path's ``compile`` says so: True
(``COMPILE=1``) every one, False (``COMPILE=0``) none, None (``COMPILE`` unset) each as its folder's
``config.json`` says (``"compile": true``; absent: eager). A compiled model is warmed up inside its load, so the
load's time holds the compile and no request pays it."""

from __future__ import annotations

import logging
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

log = logging.getLogger("diffuserve.warm")


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
        # engine models: True/False for all, None: each model's own default (see the module's docstring)
        self.engine_compile: bool | None = self.fast.compile

    @property
    def pipelines(self) -> Pipelines:
        """The diffusers side, created on first use (importing diffusers only when a pipeline is served)."""
        if self._pipelines is None:
            from core.pipelines.loader import Pipelines

            self._pipelines = Pipelines(self.registry, self.device, self.cache, self.fast)
        return self._pipelines

    def load_engine(self, entry: ModelEntry) -> tuple[DDPMEngineModel, float]:
        """(model, load_ms) of one of our engine's models: 0 ms on a warm hit. A model to compile is compiled and
        warmed up here, within its load."""
        from core.ddpm.pipeline import DDPMEngineModel

        def load() -> DDPMEngineModel:
            model = DDPMEngineModel.from_pretrained(entry.path, device=self.device)
            if self.compiles_engine(entry):
                from core.ddpm.compile import compile_network, warm_up

                compile_network(
                    model.unet,
                    backend=self.fast.compile_backend,
                    cuda_graphs=bool(self.fast.cuda_graphs),
                    cache_dir=self.fast.cache_dir or self.cache_dir / "inductor-cache",
                )
                seconds = warm_up(model.unet)
                log.info("engine %s compiled and warmed up in %.1f s", entry.id, seconds)
            return model

        return self.cache.get(("engine", entry.id, entry.version), load)

    def compiles_engine(self, entry: ModelEntry) -> bool:
        """Whether ``entry`` (an engine model) runs compiled: the setting when given, else the model's default."""
        if self.engine_compile is not None:
            return self.engine_compile
        return entry.compile

    def engine_versions(self, engine: DDPMEngineModel) -> dict[str, str]:
        """The versions an engine job records: ``versions`` and how the model ran (``engine_compiled``: the compile
        backend, e.g. ``inductor``, or ``off``)."""
        from core.ddpm.compile import compiled

        return {**self.versions, "engine_compiled": compiled(engine.unet) or "off"}

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
