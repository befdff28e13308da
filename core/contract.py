"""The worker→engine contract: what an executor is given and what it returns.

An :class:`Executor` runs one task on one kind of model; the worker's table (``core/executors/__init__.py``) has one
per (job type, model kind), imported as modules::

    executor.run(request, model, ctx, warm) -> RunResult

- ``request``: the job's typed request (``Task.request``), parsed once from the job's queued input;
- ``model``: the registry entry of the model it runs (None for a job that trains a new one);
- ``ctx``: the :class:`RunContext`, the only door to the service (progress, cancel, checkpoints, inputs,
  registrations); executors never see the job store or the storage;
- ``warm``: the worker's warm resources (:class:`core.warm.Warm`: device, model cache, diffusers pipelines).

An executor that can run several requests in one denoising loop says how (:class:`Batching`). Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from core.schemas import ModelRef, Registration

if TYPE_CHECKING:
    from core.registry import ModelEntry
    from core.warm import Warm

R = TypeVar("R", bound=BaseModel)


@dataclass
class Artifact:
    """One output: bytes, their content type and file extension, and what the envelope says of it."""

    data: bytes
    content_type: str
    extension: str
    meta: dict = field(default_factory=dict)


@dataclass
class RunResult:
    artifacts: list[Artifact]
    load_ms: float = 0.0
    inference_ms: float = 0.0
    model: ModelRef | None = None
    versions: dict[str, str] = field(default_factory=dict)


class RunContext(Protocol):
    """What a running job sees of the service."""

    job_id: str
    tenant: str

    def progress(self, step: int, total: int, **extra: float) -> None:
        """Report a step; raises JobCancelled when a cancel was asked, LeaseLost when the job moved on to another
        worker, DeadlineExceeded past the job's ``timeout_s``."""

    def cancelled(self) -> bool:
        """Whether a cancel was asked (for loops that stop on their own terms)."""

    def preview(self, step: int, total: int, png: bytes) -> None:
        """A step preview (a small PNG) for the job's event stream; never raises."""

    def save_checkpoint(self, name: str, data: bytes) -> bool:
        """Keep ``data`` for a later attempt of this job (bounded retries; False when it could not be saved)."""

    def load_checkpoint(self, name: str) -> bytes | None:
        """What an earlier attempt saved under ``name``, or None."""

    def open_input(self, upload_id: str) -> bytes:
        """The bytes of one of the tenant's uploads (images, datasets); InputExpired when retention deleted it."""

    def registration(self, kind: str, name: str) -> Registration | None:
        """The record of the tenant's ``kind`` named ``name`` (its ``version`` is the sha256 of its files), or None;
        no file is read."""

    def registered(self, kind: str, name: str) -> tuple[Registration, Path] | None:
        """A model or LoRA the tenant trained (``kind`` ``model`` | ``lora``): its record and a local folder of its
        files; None when the tenant has none by that name."""

    def register(self, kind: str, name: str, folder: Path, extra: dict | None = None) -> Registration:
        """Publish the files of ``folder`` as the tenant's ``kind`` named ``name``; returns the record."""


@dataclass(frozen=True)
class Batching(Generic[R]):
    """How an executor runs several requests in one denoising loop: ``key(request, model)`` (requests with equal keys
    may share a loop; None: this one runs alone) and ``run(requests, model, ctxs, warm)`` (each request's RunResult
    or the error it ends with, in order; each image equals the same request run alone)."""

    key: Callable[[R, ModelEntry], tuple | None]
    run: Callable[[list[R], ModelEntry, list[RunContext], Warm], list[RunResult | BaseException]]


@dataclass(frozen=True)
class Executor(Generic[R]):
    """What runs one task on one kind of model: ``run(request, model, ctx, warm)``, and ``batching`` where it can."""

    run: Callable[[R, Any, RunContext, Warm], RunResult]
    batching: Batching[R] | None = None
