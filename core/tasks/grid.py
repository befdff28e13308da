"""Grids: a txt2img request drawn over one or two axes (A1111's X/Y plot), each cell an image, then a labelled
contact sheet."""

from __future__ import annotations

import secrets

from pydantic import ValidationError

from core.catalog import LIMITS, ModelKind
from core.errors import InputError
from core.schemas import MAX_SEED, GridRequest, JobType
from core.tasks.admission import Inputs, generation, updated
from core.tasks.base import Admitted, Task
from core.tasks.txt2img import TASK as TXT2IMG


def admit(v: Inputs, tenant: str, request: GridRequest, image_size: None) -> Admitted[GridRequest]:
    # 1. the base request as txt2img admission fills it, with one seed for every cell unless seed is an axis
    base = request.base
    if base.seed is None:
        base = updated(base, seed=secrets.randbelow(MAX_SEED + 1 - 8))
    done = generation(v, tenant, TXT2IMG, base, None)
    request = updated(request, base=done.request)
    # 2. the cells: each a valid txt2img request for the model, and all of them under the steps cap
    try:
        cells = request.cells()
    except ValidationError as e:
        raise InputError(f"a grid cell is not a valid request: {e.errors()[0]['msg']}", field="x") from None
    total = sum(cell.num_inference_steps for _, _, cell in cells)
    if total > v.grid_max_total_steps:
        raise InputError(
            f"the grid's cells add up to {total:,} denoising steps, over the limit of {v.grid_max_total_steps:,}; "
            "fewer cells or steps",
            field="x",
            code="too_expensive",
        )
    for col, row, cell in cells:
        try:
            generation(v, tenant, TXT2IMG, cell, None)
        except InputError as e:
            raise InputError(f"cell ({col}, {row}): {e.message}", field=e.field, code=e.code) from None
    # 3. the default timeout grows with the number of cells
    if request.timeout_s is None:
        lim = LIMITS[done.limits]
        request = updated(request, timeout_s=min(lim.max_timeout_s, lim.default_timeout_s * len(cells)))
    return Admitted(request, done.model, done.limits)


TASK: Task[GridRequest] = Task(
    type=JobType.grid,
    request=GridRequest,
    path="/grids",
    name="grid",
    summary=(
        "Queue a grid: a txt2img request over one or two axes (guidance_scale, scheduler, num_inference_steps, "
        "seed, lora_scale; at most 64 cells); outputs are each cell, then a labelled contact sheet."
    ),
    admit=admit,
    kinds=(ModelKind.engine, ModelKind.diffusers),
    filled=("timeout_s",),
)
