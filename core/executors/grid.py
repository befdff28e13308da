"""A grid (A1111's X/Y plot): the base txt2img request drawn once per cell, then a labelled contact sheet.

Each cell runs through the txt2img executor of the model's kind, so a cell equals the same request drawn alone.
"""

from __future__ import annotations

import io

from core.contract import Artifact, Executor, RunContext, RunResult
from core.registry import ModelEntry
from core.schemas import GridRequest, Txt2ImgRequest
from core.warm import Warm

LABEL_PX = 14  # the height of a label line


class CellContext:
    """The job's context as one cell sees it: its steps count toward the whole grid's progress."""

    def __init__(self, ctx: RunContext, done_steps: int, grid_steps: int):
        self.ctx, self.done_steps, self.grid_steps = ctx, done_steps, grid_steps

    def progress(self, step: int, total: int, **extra: float) -> None:
        self.ctx.progress(self.done_steps + step, self.grid_steps, **extra)

    def preview(self, step: int, total: int, png: bytes) -> None:
        self.ctx.preview(self.done_steps + step, self.grid_steps, png)

    def __getattr__(self, name: str):  # tenant, registered, open_input, cancelled...
        return getattr(self.ctx, name)


def label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def contact_sheet(images: dict[tuple[int, int], object], request: GridRequest) -> bytes:
    """The cells in rows and columns, each at least 96 px wide, with the axes' names and values written beside."""
    from PIL import Image, ImageDraw

    cols, rows = len(request.x.values), len(request.y.values) if request.y else 1
    first = next(iter(images.values()))
    scale = max(1, -(-96 // first.width))  # small images (the 16 px digits) are enlarged, pixels kept sharp
    w, h = first.width * scale, first.height * scale
    left = 8 + 8 * max(len(f"{request.y.param}={label(v)}") for v in request.y.values) if request.y else 0
    top = 2 * LABEL_PX + 4
    sheet = Image.new("RGB", (left + cols * w, top + rows * h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((left + 2, 0), f"x: {request.x.param}", fill="black")
    for col, value in enumerate(request.x.values):
        draw.text((left + col * w + 2, LABEL_PX), label(value), fill="black")
    for row in range(rows):
        if request.y:
            draw.text(
                (2, top + row * h + h // 2 - 6), f"{request.y.param}={label(request.y.values[row])}", fill="black"
            )
        for col in range(cols):
            cell = images[(col, row)].convert("RGB").resize((w, h), Image.NEAREST)
            sheet.paste(cell, (left + col * w, top + row * h))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def for_cells(draw: Executor[Txt2ImgRequest]) -> Executor[GridRequest]:
    """The grid executor of a model kind, drawing each cell with that kind's txt2img executor (``draw``)."""
    return Executor(lambda request, model, ctx, warm: run(request, model, ctx, warm, draw))


def run(request: GridRequest, model: ModelEntry, ctx: RunContext, warm: Warm, draw: Executor) -> RunResult:
    from PIL import Image

    cells = request.cells()
    grid_steps = sum(cell.num_inference_steps for _, _, cell in cells)
    # 1. every cell, one after the other, as the txt2img request it is
    artifacts, images, done, load_ms, inference_ms = [], {}, 0, 0.0, 0.0
    for col, row, cell in cells:
        result = draw.run(cell, model, CellContext(ctx, done, grid_steps), warm)
        done += cell.num_inference_steps
        load_ms += result.load_ms
        inference_ms += result.inference_ms
        art = result.artifacts[0]
        meta = {**art.meta, "x": request.x.values[col], "column": col, "row": row}
        if request.y:
            meta["y"] = request.y.values[row]
        artifacts.append(Artifact(art.data, art.content_type, art.extension, meta))
        images[(col, row)] = Image.open(io.BytesIO(art.data))
    # 2. the contact sheet, last
    sheet = contact_sheet(images, request)
    size = Image.open(io.BytesIO(sheet)).size
    artifacts.append(
        Artifact(sheet, "image/png", "png", {"width": size[0], "height": size[1], "role": "contact_sheet"})
    )
    return RunResult(artifacts, load_ms, inference_ms, result.model, result.versions)
