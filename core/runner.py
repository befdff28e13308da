"""The only door from a worker into the engines: ``Runner.run(job, ctx)`` picks the executor by job type.

Models load once per process and stay warm (an LRU keyed by model id and weights hash).
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import JobError
from core.jobs.execute import Artifact, RunContext, RunResult
from core.registry import ModelEntry, ModelRegistry
from core.schemas import JobRecord, JobType, ModelRef


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


def default_budget(device: str) -> int:
    """Memory the pipeline cache may hold: 80% of the GPU's memory, or half of the RAM on CPU."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory * 0.8)
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)


class Runner:
    def __init__(
        self,
        registry: ModelRegistry,
        device: str | None = None,
        torch_threads: int = 0,
        pipeline_budget_bytes: int | None = None,
        cache_dir: str | Path | None = None,
        on_load: Callable[[str, float], None] | None = None,
    ):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.registry = registry
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._versions = versions()
        from core.pipelines.cache import PipelineCache

        # one warm cache, one memory budget, for engine models and diffusers pipelines alike
        self.cache = PipelineCache(
            pipeline_budget_bytes or default_budget(self.device),
            on_load=(lambda key, ms: on_load(key[1], ms)) if on_load else None,  # key: (kind, model id, version)
        )
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "diffuserve-cache"
        self._diffusers = None

    @property
    def diffusers(self):
        """The diffusers executor, created on first use (importing diffusers only when a pipeline is served)."""
        if self._diffusers is None:
            from core.pipelines.executors import DiffusersExecutor

            self._diffusers = DiffusersExecutor(self.registry, self.device, self.cache, self.cache_dir)
        return self._diffusers

    # -- warm cache ---------------------------------------------------------------------------------
    def load_engine(self, entry: ModelEntry):
        """Return (model, load_ms): 0 ms on a warm hit."""
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
            if entry.kind.startswith("engine"):
                self.load_engine(entry)
            elif entry.kind == "diffusers":
                self.diffusers.base_pipeline(entry)

    # -- dispatch -----------------------------------------------------------------------------------
    def run(self, job: JobRecord, ctx: RunContext) -> RunResult:
        if job.type == JobType.ddpm_training:
            from core.training.ddpm_job import run_ddpm_training

            return run_ddpm_training(job, ctx, self.device)
        if job.type == JobType.lora_training:
            from core.training.lora_job import run_lora_training

            return run_lora_training(job, self.resolve(job, job.input["base_model"], ctx), ctx, self.device)
        model_id = job.input.get("model")
        if model_id is not None:
            entry = self.resolve(job, model_id, ctx)
            if job.type == JobType.txt2img and entry.kind.startswith("engine"):
                return self._engine_txt2img(job, entry, ctx)
            if entry.kind == "diffusers" and job.type.value in entry.tasks:
                return self.diffusers.run(job, entry, ctx)
        raise JobError("unsupported_task", f"no executor for {job.type.value} on model {job.input.get('model')!r} yet")

    def resolve(self, job: JobRecord, model_id: str, ctx: RunContext) -> ModelEntry:
        """A model the job's tenant trained (materialised from storage into the local cache), else a served one."""
        from core import tenant_models

        record = ctx.store.registration(job.tenant, "model", model_id)
        if record is None:
            return self.registry.get(model_id)
        entry = tenant_models.entry_from_record(record)
        entry.path = tenant_models.materialize(ctx.storage, record, self.cache_dir)
        return entry

    def _engine_txt2img(self, job: JobRecord, entry: ModelEntry, ctx: RunContext) -> RunResult:
        # 1. load (warm hit: 0 ms)
        model, load_ms = self.load_engine(entry)
        p = job.input
        labels = [p["prompt"]] if entry.labels else None
        size = p.get("width") or entry.width
        # 2. denoise, reporting every step (the callback raises JobCancelled when asked to stop)
        t0 = time.perf_counter()
        images = model.generate(
            labels=labels,
            num_images=p["num_images"],
            num_inference_steps=p["num_inference_steps"],
            sampler=p["scheduler"],
            guidance_scale=p["guidance_scale"],
            seed=p["seed"],
            size=size,
            callback=ctx.progress,
        )
        inference_ms = (time.perf_counter() - t0) * 1000
        # 3. encode
        from core.ddpm.pipeline import to_pil_images

        artifacts = []
        label = model.labels[model.label_index(p["prompt"])] if entry.labels else None
        for i, im in enumerate(to_pil_images(images)):
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            meta = {"width": im.width, "height": im.height, "seed": p["seed"] + i}
            if label is not None:
                meta["label"] = label
            artifacts.append(Artifact(buf.getvalue(), "image/png", "png", meta))
        return RunResult(
            artifacts,
            load_ms=load_ms,
            inference_ms=inference_ms,
            model=ModelRef(id=entry.id, sha256=entry.version),
            versions=self._versions,
        )
