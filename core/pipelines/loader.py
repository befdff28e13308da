"""Loading diffusers pipelines for the executors (``core/executors``): warm base pipelines, schedulers by name,
LoRA adapters, and the denoising call they share.

Each task's pipeline is built per request from the warm base pipeline's components with ``from_pipe`` and a
fresh scheduler (``from_config`` of the model's own), so the cached pipeline is never mutated and no weights
are loaded twice. Image i of a job draws its noise from ``seed + i`` alone.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import torch

from core.catalog import FAMILIES, FLOW_SCHEDULERS, SCHEDULERS
from core.contract import Artifact, RunContext, RunResult
from core.errors import JobError
from core.pipelines.cache import PipelineCache
from core.registry import ModelEntry, ModelRegistry
from core.schemas import ModelRef


def pick_dtype(device: str, pipeline_class: str) -> torch.dtype:
    if device.startswith("cuda"):
        # bf16 for the transformer families (their fp16 overflows), fp16 for the UNet ones
        return torch.bfloat16 if FAMILIES[pipeline_class].flow else torch.float16
    return torch.float32


def make_scheduler(name: str, base_scheduler, flow: bool):
    """A fresh scheduler of the requested kind from the model's own scheduler config."""
    import diffusers

    if name in (None, "default"):
        return type(base_scheduler).from_config(base_scheduler.config)
    table = FLOW_SCHEDULERS if flow else SCHEDULERS
    cls_name, extra = table[name]
    kwargs = dict(extra)
    if flow and cls_name == "UniPCMultistepScheduler":
        kwargs.update(prediction_type="flow_prediction", use_flow_sigmas=True)
    return getattr(diffusers, cls_name).from_config(base_scheduler.config, **kwargs)


MAX_ADAPTERS = 8  # adapters kept loaded per pipeline (LRU)


class Pipelines:
    """The worker's diffusers side: warm base pipelines and ControlNets (in the shared memory-budgeted cache), a
    fresh scheduler per request, LoRA adapters per pipeline, and the shared denoising call."""

    def __init__(self, registry: ModelRegistry, device: str, cache: PipelineCache):
        self.registry = registry
        self.device = device
        self.cache = cache  # shared with the engine models
        self._adapters: dict[tuple, list[str]] = {}  # loaded adapter names per cached pipeline, most recent last

    # -- loading ------------------------------------------------------------------------------------
    def base(self, entry: ModelEntry):
        """(pipeline, load_ms): 0 ms on a warm hit. Never mutated by a request except for its LoRA adapters."""

        def load():
            import diffusers

            cls = getattr(diffusers, entry.pipeline_class)
            pipe = cls.from_pretrained(entry.source, dtype=pick_dtype(self.device, entry.pipeline_class))
            pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            return pipe

        return self.cache.get(self._key(entry), load)

    @staticmethod
    def _key(entry: ModelEntry) -> tuple:
        return ("pipeline", entry.id, entry.version)

    def controlnet(self, name: str, entry: ModelEntry):
        source = self.registry.controlnet(name)

        def load():
            from diffusers import ControlNetModel

            dtype = pick_dtype(self.device, entry.pipeline_class)
            return ControlNetModel.from_pretrained(source, dtype=dtype).to(self.device)

        return self.cache.get(("controlnet", name, source), load)

    def scheduler(self, name: str | None, base, entry: ModelEntry):
        return make_scheduler(name, base.scheduler, FAMILIES[entry.pipeline_class].flow)

    # -- LoRA adapters ------------------------------------------------------------------------------
    def lora_file(self, name: str, ctx: RunContext) -> tuple[str, Path]:
        """(adapter id, file) of a LoRA: the tenant's own (trained by a job) or one in MODELS_DIR/loras."""
        own = ctx.registered("lora", name)
        if own:
            record, folder = own
            return f"t_{ctx.tenant}_{name}_{record['version'][:12]}", folder / "pytorch_lora_weights.safetensors"
        path = self.registry.lora(name)
        if path is None:
            raise JobError("unknown_lora", f"unknown LoRA {name!r}")
        return f"g_{name}_{path.stat().st_mtime_ns}", path

    def apply_loras(self, entry: ModelEntry, base, loras: list, ctx: RunContext) -> None:
        """Activate exactly the requested adapters at their scales; with none, disable every adapter so the output
        is the base model's. Adapters load once per pipeline and stay (LRU of MAX_ADAPTERS); the base weights are
        never reloaded."""
        loaded = self._adapters.setdefault(self._key(entry), [])
        if not loras:
            if loaded:
                base.disable_lora()
            return
        names, scales = [], []
        for ref in loras:
            adapter, path = self.lora_file(ref.name, ctx)
            adapter = adapter.replace(".", "_").replace("-", "_")
            if adapter not in loaded:
                base.load_lora_weights(str(path), adapter_name=adapter)
                loaded.append(adapter)
                while len(loaded) > MAX_ADAPTERS:
                    base.delete_adapters(loaded.pop(0))
            else:
                loaded.append(loaded.pop(loaded.index(adapter)))  # most recently used last
            names.append(adapter)
            scales.append(ref.scale)
        base.enable_lora()
        base.set_adapters(names, adapter_weights=scales)


def open_image(ctx: RunContext, upload_id: str, size: tuple[int, int] | None = None, mode: str = "RGB"):
    """An image input (an upload of the tenant's; inline images became uploads at submit), resized to ``size``."""
    from PIL import Image

    image = Image.open(io.BytesIO(ctx.open_input(upload_id)))
    image.load()
    image = image.convert(mode)
    if size and image.size != size:
        image = image.resize(size, Image.LANCZOS)
    return image


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def denoise(pipe, request, ctx: RunContext, **call) -> tuple[object, float]:
    """The denoising call every diffusers task shares: one generator per image (image i is reproducible alone from
    ``seed + i``), progress and cancel at every step. Returns (pipeline output, inference_ms)."""
    pipe.set_progress_bar_config(disable=True)
    n = getattr(request, "num_images", 1)
    generators = [torch.Generator("cpu").manual_seed(request.seed + i) for i in range(n)]

    def on_step_end(pipeline, step, timestep, kwargs):
        total = getattr(pipeline, "_num_timesteps", None) or request.num_inference_steps
        ctx.progress(step + 1, int(total))  # raises JobCancelled when asked to stop
        return kwargs

    call.update(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or None,
        height=request.height,
        width=request.width,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=generators if n > 1 else generators[0],
        callback_on_step_end=on_step_end,
    )
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = pipe(**call)
    return out, (time.perf_counter() - t0) * 1000


def image_result(
    out, request, entry: ModelEntry, load_ms: float, inference_ms: float, extra: list[Artifact] | None = None
) -> RunResult:
    artifacts = [
        Artifact(png(im), "image/png", "png", {"width": im.width, "height": im.height, "seed": request.seed + i})
        for i, im in enumerate(out.images)
    ]
    return RunResult(artifacts + (extra or []), load_ms, inference_ms, ModelRef(id=entry.id, sha256=entry.version))
