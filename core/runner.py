"""The only door from a worker into the engines: :class:`Engines` parses a job's typed request once
(``TASKS[job.type].parse``), resolves its model and calls the executor of (job type, model kind) from the worker's
table (``core/executors``) with the warm resources (:class:`core.warm.Warm`). It also groups jobs that can share one
denoising loop (``group``, ``run_batch``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from core.catalog import ModelKind, batching_pays
from core.contract import RunContext, RunResult
from core.registry import ModelEntry, ModelRegistry
from core.schemas import JobRecord, ModelRef
from core.tasks import TASKS
from core.warm import Warm

if TYPE_CHECKING:
    from core.pipelines.fastpath import FastPath


class BatchMemory:
    """How many images of a batch key fit in a GPU's free memory: each batch's peak memory per image is measured
    (``measure``) and the next batch of that key capped to ``headroom`` of the free memory over it (``cap``). Without
    a measurement, or on a CPU (``free_bytes`` None), no cap beyond ``MAX_BATCH``."""

    def __init__(self, free_bytes: Callable[[], int] | None = None, headroom: float = 0.8):
        self.free_bytes = free_bytes
        self.headroom = headroom
        self.per_image: dict[tuple, float] = {}

    @classmethod
    def for_device(cls, device: str) -> BatchMemory:
        if not device.startswith("cuda"):
            return cls()
        import torch

        return cls(lambda: torch.cuda.mem_get_info(torch.device(device))[0])

    def observe(self, key: tuple, images: int, peak_bytes: int) -> None:
        if images > 0 and peak_bytes > 0:
            self.per_image[key] = max(self.per_image.get(key, 0.0), peak_bytes / images)

    def cap(self, key: tuple) -> int:
        """Images a batch of ``key`` may hold (a very large number when nothing limits it)."""
        per_image = self.per_image.get(key)
        if self.free_bytes is None or not per_image:
            return 1 << 30
        return max(1, int(self.free_bytes() * self.headroom / per_image))

    @contextmanager
    def measure(self, key: tuple, images: int) -> Iterator[None]:
        if self.free_bytes is None:
            yield
            return
        import torch

        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        yield
        self.observe(key, images, torch.cuda.max_memory_allocated() - before)


class Engines:
    """A worker's dispatcher: one door from a job to its executor (``run``) and to batches (``group``,
    ``run_batch``). It owns the warm resources executors are given (``warm``) and what batching learns of memory."""

    def __init__(
        self,
        registry: ModelRegistry,
        device: str | None = None,
        torch_threads: int = 0,
        pipeline_budget_bytes: int | None = None,
        cache_dir: str | Path | None = None,
        on_load: Callable[[str, float], None] | None = None,
        max_batch: int = 8,
        fast: FastPath | None = None,
        max_warm_models: int | None = None,
        demand: Callable[[str], float] | None = None,
    ):
        self.registry = registry
        self.warm = Warm(
            registry, device, torch_threads, pipeline_budget_bytes, cache_dir, on_load, fast, max_warm_models, demand
        )
        self.max_batch = max_batch
        self.memory = BatchMemory.for_device(self.warm.device)

    @property
    def cache_dir(self) -> Path:
        """Where the jobs' contexts keep tenants' files (models, LoRAs) fetched from storage."""
        return self.warm.cache_dir

    # -- dispatch -----------------------------------------------------------------------------------
    def run(self, job: JobRecord, ctx: RunContext) -> RunResult:
        from core.executors import executor_for

        # 1. the typed request, parsed once on this side of the queue (admission built it with the same model)
        request = self.parse(job)
        # 2. the model that serves it: the tenant's own (trained by a job), else a served one
        model_id = _model_id(request)
        model = self.resolve(model_id, ctx, job.model) if model_id else None
        # 3. the executor of (job type, model kind)
        executor = executor_for(job.type, model.kind if model else None)
        return self._stamp(executor.run(request, model, ctx, self.warm), model)

    @staticmethod
    def parse(job: JobRecord) -> BaseModel:
        return TASKS[job.type].parse(job.input, job.id)

    def _stamp(self, result, model: ModelEntry | None):
        """Every result records the versions that made it (and, for a diffusers pipeline, its fast path)."""
        if isinstance(result, RunResult):
            extra = {"fast_path": self.warm.fast.describe()} if model and model.kind != ModelKind.engine else {}
            result.versions = {**self.warm.versions, **extra, **result.versions}
        return result

    # -- batching: jobs that can share one denoising loop ---------------------------------------------
    def _batch_key(self, job: JobRecord, ctx: RunContext) -> tuple | None:
        """Everything that changes a job's pixels beyond its own prompt and seed, resolved for its tenant: the
        executor's key (size, steps, scheduler, guidance, ...), whose model and which weights, and each LoRA's owner,
        weights version and scale. Two tenants' LoRAs of one name never share a key. None: the job runs alone (its
        executor does not batch, or the catalog says a batch of its family and size does not pay on this device)."""
        from core.executors import executor_for

        request = self.parse(job)
        model_id = _model_id(request)
        if model_id is None:
            return None
        # the model's entry from its registration alone: grouping downloads no tenant's files
        model, owner = self._resolve(model_id, ctx, materialize=False, admitted=job.model)
        batching = executor_for(job.type, model.kind).batching
        found = batching.key(request, model) if batching else None
        if found is None or not self._batching_pays(request, model):
            return None
        loras = tuple(
            (self.warm.pipelines.lora_identity(ref.name, ctx), ref.scale) for ref in getattr(request, "loras", ())
        )
        return (job.type, owner, model.id, model.version, loras, found)

    def _batching_pays(self, request: BaseModel, model: ModelEntry) -> bool:
        """Whether a batch beats running one by one for this family (``engine`` or the pipeline class) at this size
        per image on this device: the catalog's ``BATCHING_PAYS_UP_TO``, measured by bench/throughput.py."""
        family = "engine" if model.kind == ModelKind.engine else model.pipeline_class or ""
        pixels = getattr(request, "width", 0) * getattr(request, "height", 0)
        return batching_pays(self.warm.device, family, pixels)

    def group(
        self, jobs: list[JobRecord], context: Callable[[JobRecord], RunContext], max_batch: int | None = None
    ) -> list[list[JobRecord]]:
        """Jobs grouped by the batch key of their executor (``Batching.key``), at most ``max_batch`` a group and, on a
        GPU, no more images than fit in free memory (``self.memory``); a job whose executor has none, or whose
        request cannot be read, runs alone. Order is kept within a group."""
        max_batch = max_batch or self.max_batch
        groups: list[list[JobRecord]] = []
        open_group: dict[object, tuple[list[JobRecord], list[int]]] = {}  # key -> (group, [its images, its cap])
        for job in jobs:
            try:
                key = self._batch_key(job, context(job))
            except Exception:  # noqa: BLE001 - it runs alone and reports its own error there
                key = None
            images = int(job.input.get("num_images", 1) or 1)
            group, room = open_group.get(key, (None, [0, 0])) if key is not None else (None, [0, 0])
            if group is None or len(group) >= max_batch or room[0] + images > room[1]:
                group, room = [], [0, self.memory.cap(key) if key is not None else 0]
                groups.append(group)
                if key is not None:
                    open_group[key] = (group, room)
            group.append(job)
            room[0] += images
        return groups

    def run_batch(self, jobs: list[JobRecord], ctxs: list[RunContext]) -> list:
        """One batch of a group: each job's RunResult or the error it ends with. On a GPU the batch's peak memory
        per image is learned for its key (what ``group`` then caps by)."""
        from core.executors import executor_for

        # 1. the keys again as the batch starts: a LoRA or model registered since grouping splits the batch
        try:
            keys = [self._batch_key(job, ctx) for job, ctx in zip(jobs, ctxs, strict=True)]
        except Exception:  # noqa: BLE001 - each job then runs alone and reports its own error
            keys = [None]
        if keys[0] is None or any(key != keys[0] for key in keys):
            return [_outcome(lambda job=job, ctx=ctx: self.run(job, ctx)) for job, ctx in zip(jobs, ctxs, strict=True)]
        # 2. one denoising loop: the model and LoRAs resolved as the first job's tenant are every job's (same key)
        requests = [self.parse(job) for job in jobs]
        model = self.resolve(requests[0].model, ctxs[0], jobs[0].model)
        batching = executor_for(jobs[0].type, model.kind).batching
        with self.memory.measure(keys[0], sum(r.num_images for r in requests)):  # the key group() caps by
            outcomes = batching.run(requests, model, ctxs, self.warm)
        return [self._stamp(o, model) for o in outcomes]

    def resolve(self, model_id: str, ctx: RunContext, admitted: ModelRef | None = None) -> ModelEntry:
        return self._resolve(model_id, ctx, admitted=admitted)[0]

    def _resolve(
        self, model_id: str, ctx: RunContext, materialize: bool = True, admitted: ModelRef | None = None
    ) -> tuple[ModelEntry, str | None]:
        """(entry, owner): the tenant's own model of that name (owner: the tenant), else a served one (None). With
        ``materialize`` the tenant's files are fetched into the local cache and the entry points at them.

        ``admitted``: the model the job was admitted for (its record's ``model``). Admission looked for the tenant's
        own model first; when it chose the served one and that entry is still the same version, the job runs it
        without asking the store again: a job runs the weights it was admitted for (a model of the same name the
        tenant registers meanwhile serves its later jobs), and one read less is on every job's way to the device."""
        from core import tenant_models

        if admitted is not None and admitted.id == model_id and admitted.sha256 and self.registry.known(model_id):
            served = self.registry.get(model_id)
            if served.version == admitted.sha256:
                return served, None
        record = ctx.registration("model", model_id)
        if record is None:
            return self.registry.get(model_id), None
        entry = tenant_models.entry_from_record(record)
        if materialize:
            _, entry.path = ctx.registered("model", model_id)
        return entry, ctx.tenant


def _model_id(request: BaseModel) -> str | None:
    """The model a request runs on: ``model`` (generation, grids), ``base_model`` (LoRA training); None for a job
    that makes a new model."""
    return getattr(request, "base_model", None) or getattr(request, "model", None)


def _outcome(fn: Callable[[], RunResult]) -> RunResult | BaseException:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the outcome of one job, recorded by the caller
        return e
