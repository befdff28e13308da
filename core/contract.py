"""The worker→engine contract: what an executor is given and what it returns.

An executor is one function per (model kind, job type), listed in ``core/executors/__init__.py``::

    run(request, model, ctx, engines) -> RunResult

- ``request``: the job's typed request (``REQUEST_MODELS[job.type]``), parsed once from the job's input;
- ``model``: the registry entry of the model it runs (None for a job that trains a new one);
- ``ctx``: the :class:`RunContext`, the only door to the service (progress, cancel, checkpoints, inputs,
  registrations); executors never see the job store or the storage;
- ``engines``: the worker's warm resources (device, model cache, diffusers pipelines).

Torch-free: the gateway imports the request models from here too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from core.errors import RequestUnreadable
from core.schemas import REQUEST_MODELS, JobType, ModelRef

log = logging.getLogger("diffuserve.worker")


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

    def registration(self, kind: str, name: str) -> dict | None:
        """The record of the tenant's ``kind`` named ``name`` (its ``version`` is the sha256 of its files), or None;
        no file is read."""

    def registered(self, kind: str, name: str) -> tuple[dict, Path] | None:
        """A model or LoRA the tenant trained (``kind`` ``model`` | ``lora``): its record and a local folder of its
        files; None when the tenant has none by that name."""

    def register(self, kind: str, name: str, folder: Path, extra: dict | None = None) -> dict:
        """Publish the files of ``folder`` as the tenant's ``kind`` named ``name``; returns the record."""


class Executor(Protocol):
    def __call__(self, request: Any, model: Any, ctx: RunContext, engines: Any) -> RunResult: ...


def parse_request(job_type: JobType, data: dict, job_id: str = "") -> BaseModel:
    """The typed request of a job, parsed once on the worker side (the queue carries JSON). Admission built ``data``
    with the same model, so a failure here is the service's bug: :class:`RequestUnreadable` (``internal_error``,
    the details logged), never the client's ``invalid_input``."""
    try:
        return REQUEST_MODELS[job_type].model_validate(data)
    except ValidationError as e:
        log.error("job %s: its queued %s request does not parse: %s", job_id, job_type.value, e)
        raise RequestUnreadable(job_type.value) from None
