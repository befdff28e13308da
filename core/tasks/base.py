"""What a job type is: its :class:`Task`. Torch-free: the gateway's routes, admission and the compatibility adapters
read it, and the worker parses a job's queued request with it. Each task lives in its own module of
``core/tasks``; ``core/tasks/__init__.py`` holds the one registry (``TASKS``). What runs a task on a worker is
the worker's own table (``core/executors/__init__.py``), keyed by the task's type and the model kinds it lists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from core.catalog import ModelKind, family_of
from core.errors import RequestUnreadable
from core.schemas import JobType, ModelRef, Priority

if TYPE_CHECKING:
    from core.registry import ModelEntry
    from core.tasks.admission import Inputs

log = logging.getLogger("diffuserve.tasks")

R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class Admitted(Generic[R]):
    """A request as admission leaves it: every default filled from the model entry (size, steps, guidance, scheduler,
    frames), the model it runs and the limits family its costs were checked against."""

    request: R
    model: ModelRef | None
    limits: str


# a task's own admission step: (inputs, tenant, the request as the client sent it, the size of its input image
# if any) -> the request with the model's defaults filled in and checked against the model's rules
AdmitStep = Callable[["Inputs", str, R, "tuple[int, int] | None"], Admitted[R]]


@dataclass(frozen=True)
class Task(Generic[R]):
    """One job type from the edge to the executor.

    - ``request``: the request model; the route's body, what admission fills in and what the worker parses;
    - ``path``, ``name``, ``summary``: its route (``POST /v1{path}``, operation id ``name``);
    - ``admit``: its admission step (``core/tasks/admission.py`` runs the steps every task shares around it);
    - ``queue``: the queue its jobs wait in (``inference`` or ``training``); ``priority``: their default level;
    - ``kinds``: the kinds of model that serve it (None: a job that makes a new model); the worker's executor table
      has a row for each (checked by ``tests/core/test_tasks.py``);
    - ``limits``: the limits family (``core/catalog.LIMITS``) of its costs; None: the serving model's
      (``engine`` or ``image``);
    - ``images``: the fields that carry images (uploads or data: URIs), in the order the default size is read from;
    - ``marks``: fields whose presence makes an adapter's untyped request this task (``core/tasks.infer``);
    - ``filled``: fields admission always fills, never None once queued (the worker refuses a request without them).
    """

    type: JobType
    request: type[R]
    path: str
    name: str
    summary: str
    admit: AdmitStep
    queue: Literal["inference", "training"] = "inference"
    priority: Priority = "normal"
    kinds: tuple[ModelKind | None, ...] = (ModelKind.diffusers,)
    limits: str | None = None
    images: tuple[str, ...] = ()
    marks: tuple[str, ...] = ()
    filled: tuple[str, ...] = ()

    def limits_for(self, entry: ModelEntry) -> str:
        return self.limits or family_of(entry.kind)

    def parse(self, data: dict, job_id: str = "") -> R:
        """The typed request of a queued job, parsed once on the worker side. Admission built ``data`` with this same
        model and filled every field of ``filled``, so a failure here is the service's bug: :class:`RequestUnreadable`
        (``internal_error``, the details logged with the job id), never the client's ``invalid_input``."""
        try:
            request = self.request.model_validate(data)
        except ValidationError as e:
            log.error("job %s: its queued %s request does not parse: %s", job_id, self.type.value, e)
            raise RequestUnreadable(self.type.value) from None
        missing = [f for f in self.filled if getattr(request, f) is None]
        if missing:
            log.error("job %s: its queued %s request lacks %s (admission fills them)", job_id, self.type.value, missing)
            raise RequestUnreadable(self.type.value)
        return request
