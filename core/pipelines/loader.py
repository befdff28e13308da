"""Loading diffusers pipelines for the executors (``core/executors``): warm base pipelines, schedulers by name,
LoRA adapters, and the denoising call they share.

Each task's pipeline is built per request from the warm base pipeline's components with ``from_pipe`` and a
fresh scheduler (``from_config`` of the model's own), so the cached pipeline is never mutated and no weights
are loaded twice. Image i of a job draws its noise from ``seed + i`` alone.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch

from core import previews
from core.catalog import FAMILIES, FLOW_SCHEDULERS, SCHEDULERS
from core.contract import Artifact, RunContext, RunResult
from core.errors import JobError
from core.pipelines import fastpath
from core.pipelines.building import BUILDING, building_while
from core.pipelines.cache import PipelineCache
from core.pipelines.fastpath import FastPath
from core.pipelines.step_cache import step_cache
from core.registry import ModelEntry, ModelRegistry
from core.schemas import ModelRef

log = logging.getLogger("diffuserve.pipelines")


class _NoEmptyFp32Warning(logging.Filter):
    """diffusers warns on every ``to(dtype=...)`` of a model that "should keep [] in float32" (an empty list: nothing
    is kept, nothing is wrong), once per component at every pipeline load; the warning naming real modules stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []." not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_NoEmptyFp32Warning())


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

    def __init__(self, registry: ModelRegistry, device: str, cache: PipelineCache, fast: FastPath | None = None):
        self.registry = registry
        self.device = device
        self.cache = cache  # shared with the engine models
        self.fast = fast or FastPath.for_device(device)

    # -- loading ------------------------------------------------------------------------------------
    def base(self, entry: ModelEntry):
        """(pipeline, load_ms): 0 ms on a warm hit. Never mutated by a request except for its LoRA adapters."""

        def load():
            import diffusers

            dtype = pick_dtype(self.device, entry.pipeline_class)
            if entry.single_file is not None:  # A1111's or ComfyUI's folders: converted on load, configs local
                from core.pipelines.single_file import load_pipeline

                pipe = load_pipeline(entry.pipeline_class, entry.single_file, dtype, self.device)
            else:
                pipe = getattr(diffusers, entry.pipeline_class).from_pretrained(entry.source, dtype=dtype)
            pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            fastpath.prepare(pipe, self.fast)
            return pipe

        return self.cache.get(self._key(entry), load)

    def warm(self, entry: ModelEntry) -> None:
        """Load, and on a GPU or when compiled run two steps at the family's default size, so the first request
        finds the kernels chosen (cuDNN), the graph compiled and the CUDA graph captured."""
        base, _ = self.base(entry)
        if not (self.fast.compile or self.device.startswith("cuda")) or FAMILIES[entry.pipeline_class].video:
            return
        with building_while(self.fast.compile), torch.inference_mode():  # the pipeline's own default size
            base(prompt="warm-up", num_inference_steps=2, output_type="latent")

    @staticmethod
    def _key(entry: ModelEntry) -> tuple:
        return ("pipeline", entry.id, entry.version)

    def controlnet(self, name: str, entry: ModelEntry):
        source = self.registry.controlnet(name)
        single = self.registry.controlnet_file(name)

        def load():
            from diffusers import ControlNetModel

            dtype = pick_dtype(self.device, entry.pipeline_class)
            if single is not None:  # a single file in ControlNet/ or controlnet/
                from core.pipelines.single_file import load_controlnet

                model = load_controlnet(single, dtype, self.device).to(self.device)
            else:
                model = ControlNetModel.from_pretrained(source, dtype=dtype).to(self.device)
            if self.fast.channels_last:
                model.to(memory_format=torch.channels_last)
            return model

        return self.cache.get(("controlnet", name, source), load)

    def depth_model(self):
        """(model, image processor) of the depth preprocessor, loaded once and kept warm in the shared cache."""
        source = self.registry.preprocessor("depth")

        def load():
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            model = AutoModelForDepthEstimation.from_pretrained(source).to(self.device).eval()
            return _Held({"model": model}, processor=AutoImageProcessor.from_pretrained(source))

        held, _ = self.cache.get(("preprocessor", "depth", source), load)
        return held.components["model"], held.processor

    def scheduler(self, name: str | None, base, entry: ModelEntry):
        return make_scheduler(name, base.scheduler, FAMILIES[entry.pipeline_class].flow)

    # -- LoRA adapters ------------------------------------------------------------------------------
    def lora_identity(self, name: str, ctx: RunContext) -> tuple[str | None, str, str]:
        """What a LoRA reference resolves to for this tenant, without reading its files: (owner, name, weights
        version); owner is the tenant for one it trained, None for one in MODELS_DIR/loras. Two references draw the
        same pixels only when these are equal (the batch key holds them)."""
        record = ctx.registration("lora", name)
        if record is not None:
            return ctx.tenant, name, record.version
        path = self.registry.lora(name)
        if path is None:
            raise JobError("unknown_lora", f"unknown LoRA {name!r}")
        stat = path.stat()
        return None, name, f"{stat.st_size}-{stat.st_mtime_ns}"

    def lora_file(self, name: str, ctx: RunContext) -> tuple[str, Path]:
        """(adapter id, file) of a LoRA: the tenant's own (trained by a job) or one in MODELS_DIR/loras."""
        own = ctx.registered("lora", name)
        if own:
            record, folder = own
            return f"t_{ctx.tenant}_{name}_{record.version[:12]}", folder / "pytorch_lora_weights.safetensors"
        path = self.registry.lora(name)
        if path is None:
            raise JobError("unknown_lora", f"unknown LoRA {name!r}")
        return f"g_{name}_{path.stat().st_mtime_ns}", path

    def apply_loras(self, entry: ModelEntry, base, loras: list, ctx: RunContext) -> None:
        """Activate exactly the requested adapters at their scales; with none, disable every adapter so the output
        is the base model's. Adapters load once per pipeline and stay (LRU of MAX_ADAPTERS); the base weights are
        never reloaded. What is loaded is kept on the pipeline object, so a pipeline loaded again (after an
        eviction) starts with none. The files are found (a tenant's may be fetched) before the building lock is
        taken, and it is held only where layers are built (``core/pipelines/building.py``)."""
        files = [(ref, *self.lora_file(ref.name, ctx)) for ref in loras]
        if self.fast.compile:
            return self._hotswap_loras(entry, base, files)
        loaded = _held(base, "adapters", list)  # most recently used last
        if not loras:
            if loaded:
                base.disable_lora()
            if self.fast.fuse_qkv:
                with BUILDING:  # fused projections are new modules
                    fastpath.fuse(base)
            return
        fastpath.unfuse(base)  # adapters attach to the separate Q, K and V projections
        names, scales = [], []
        for ref, adapter, path in files:
            adapter = adapter.replace(".", "_").replace("-", "_")
            if adapter not in loaded:
                try:
                    with BUILDING:  # the adapter's layers are new modules
                        base.load_lora_weights(str(path), adapter_name=adapter)
                except (RuntimeError, ValueError, KeyError) as e:  # shapes or keys of another base model
                    with contextlib.suppress(Exception):  # what was injected before it failed goes again
                        base.delete_adapters(adapter)
                    raise JobError(
                        "invalid_input",
                        f"LoRA {ref.name!r} does not fit model {entry.id!r}: it was trained for another base "
                        f"model ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no detail'})",
                    ) from e
                loaded.append(adapter)
                while len(loaded) > MAX_ADAPTERS:
                    base.delete_adapters(loaded.pop(0))
            else:
                loaded.append(loaded.pop(loaded.index(adapter)))  # most recently used last
            names.append(adapter)
            scales.append(ref.scale)
        base.enable_lora()
        base.set_adapters(names, adapter_weights=scales)

    def _hotswap_loras(self, entry: ModelEntry, base, files: list) -> None:
        """A compiled pipeline's adapters live in fixed slots (``slot0``, ``slot1``...) padded to the rank set by
        ``enable_lora_hotswap``: a new LoRA replaces a slot's weights in place (``hotswap=True``), and scales are
        tensors filled in place, so neither a swap nor a new scale triggers a recompile (only a new slot does).
        No LoRA: every slot at scale 0. ``files``: (reference, adapter id, file) of each requested LoRA."""
        from peft.tuners.lora import LoraLayer
        from peft.utils.hotswap import _convert_scalings_to_tensor, _update_scaling

        slots = _held(base, "slots", list)  # the adapter in each hot-swap slot
        units = _held(base, "units", dict)  # (module, slot) -> the scaling of weight 1.0
        layers = [m for m in fastpath.denoiser(base).modules() if isinstance(m, LoraLayer)]
        grew = False
        for i, (_, adapter, path) in enumerate(files):
            if i < len(slots) and slots[i] == adapter:
                continue
            name = f"slot{i}"
            if i < len(slots):
                with BUILDING:
                    base.load_lora_weights(str(path), adapter_name=name, hotswap=True)
                slots[i] = adapter
            else:
                with BUILDING:  # a new slot: new layers
                    base.load_lora_weights(str(path), adapter_name=name)
                slots.append(adapter)
                grew = True
                layers = [m for m in fastpath.denoiser(base).modules() if isinstance(m, LoraLayer)]
                base.set_adapters([f"slot{k}" for k in range(len(slots))], adapter_weights=[1.0] * len(slots))
                _convert_scalings_to_tensor(fastpath.denoiser(base))
            for m in layers:  # what this adapter's weight 1.0 is, read right after it loaded
                if name in m.scaling:
                    units[(id(m), name)] = float(m.scaling[name])
        if grew:
            log.info("LoRA slots of %s: %d (compiled graphs are rebuilt once)", entry.id, len(slots))
        weights = [ref.scale for ref, _, _ in files] + [0.0] * (len(slots) - len(files))
        for m in layers:
            for k, w in enumerate(weights):
                name = f"slot{k}"
                if name in m.scaling:
                    _update_scaling(m, name, units[(id(m), name)] * w)


def _held(pipe, name: str, make: type):
    """Bookkeeping kept on the pipeline object itself (``_diffuserve_<name>``): it lives and dies with that pipeline."""
    attr = f"_diffuserve_{name}"
    if not hasattr(pipe, attr):
        setattr(pipe, attr, make())
    return getattr(pipe, attr)


class _Held:
    """A cached item that is not a pipeline: its torch modules under ``components`` (what the cache counts)."""

    def __init__(self, components: dict, **extra):
        self.components = components
        self.__dict__.update(extra)


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


class Denoised(NamedTuple):
    out: Any  # the pipeline's output
    inference_ms: float
    versions: dict[str, str]  # what the call adds to the job's versions (its step cache)


def denoise(pipe, request, ctx: RunContext, fast: FastPath | None = None, **call) -> Denoised:
    """The denoising call every diffusers task shares: one generator per image (image i is reproducible alone from
    ``seed + i``), progress and cancel at every step, the fast path's per-call settings (``fast``: VAE slicing and
    tiling), the request's step cache (diffusers' hooks, for this call only)."""
    pipe.set_progress_bar_config(disable=True)
    n = getattr(request, "num_images", 1)
    generators = [torch.Generator("cpu").manual_seed(request.seed + i) for i in range(n)]

    every = getattr(request, "preview_every", 0)
    pipeline_class = type(pipe).__name__.replace("Img2Img", "").replace("Inpaint", "").replace("ControlNet", "")

    def on_step_end(pipeline, step, timestep, kwargs):
        total = int(getattr(pipeline, "_num_timesteps", None) or request.num_inference_steps)
        ctx.progress(step + 1, total)  # raises JobCancelled when asked to stop
        if previews.due(step + 1, total, every) and kwargs.get("latents") is not None:
            ctx.preview(step + 1, total, previews.latent_png(kwargs["latents"][0], pipeline_class))
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
    if fast is not None:
        fastpath.per_call(pipe, fast, request.height, request.width, n)
    t0 = time.perf_counter()
    compiled = fast is not None and bool(fast.compile)
    with step_cache(pipe, getattr(request, "cache", None), request.num_inference_steps) as counted:
        with building_while(compiled), torch.inference_mode():  # a compiled call may trace again
            out = pipe(**call)
    versions = {"step_cache": counted.describe()} if counted is not None else {}
    return Denoised(out, (time.perf_counter() - t0) * 1000, versions)


def denoise_batch(
    pipe,
    requests: list,
    ctxs: list[RunContext],
    fast: FastPath | None,
    outcomes: list,
    entry: ModelEntry,
    load_ms: float,
    per_request: dict[str, list] | None = None,
    **call,
) -> list:
    """Several requests of one batch key in one pipeline call: a prompt and a generator (``seed + i``) per image,
    and ``per_request`` inputs (e.g. each request's ``image``) repeated for its images, so every image equals the
    same request drawn alone. A request whose ``outcomes`` entry is already set (a bad input) stays out. Progress
    goes to each job; a job canceled, past its deadline or no longer ours leaves with that outcome at the next step
    (when none is left the call is interrupted). Returns ``outcomes``, one RunResult or error per request."""
    from core.errors import DeadlineExceeded, JobCancelled, LeaseLost

    members = [k for k, o in enumerate(outcomes) if o is None]
    if not members:
        return outcomes
    r0 = requests[members[0]]
    pipe.set_progress_bar_config(disable=True)
    # 1. one prompt, one generator and the request's own inputs per image, and whose image it is
    owners = [k for k in members for _ in range(requests[k].num_images)]
    per_image = {name: [values[k] for k in owners] for name, values in (per_request or {}).items()}
    seeds = [requests[k].seed + i for k in members for i in range(requests[k].num_images)]
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

    firsts = {k: owners.index(k) for k in members}  # each job's first image in the batch
    pipeline_class = type(pipe).__name__.replace("Img2Img", "")

    def on_step_end(pipeline, step, timestep, kwargs):
        total = int(getattr(pipeline, "_num_timesteps", None) or r0.num_inference_steps)
        for k in members:
            if outcomes[k] is None:
                try:
                    ctxs[k].progress(step + 1, total)
                except (JobCancelled, LeaseLost, DeadlineExceeded) as e:
                    outcomes[k] = e
                    continue
                if previews.due(step + 1, total, requests[k].preview_every) and kwargs.get("latents") is not None:
                    ctxs[k].preview(step + 1, total, previews.latent_png(kwargs["latents"][firsts[k]], pipeline_class))
        if all(outcomes[k] is not None for k in members):
            pipeline._interrupt = True  # nobody is left: the pipeline stops at its next step
        return kwargs

    # 2. denoise
    if fast is not None:
        fastpath.per_call(pipe, fast, r0.height, r0.width, len(generators))
    t0 = time.perf_counter()
    try:
        with building_while(fast is not None and bool(fast.compile)), torch.inference_mode():
            out = pipe(
                prompt=[requests[k].prompt for k in owners],
                negative_prompt=[requests[k].negative_prompt for k in owners] if r0.negative_prompt else None,
                num_inference_steps=r0.num_inference_steps,
                guidance_scale=r0.guidance_scale,
                generator=generators,
                callback_on_step_end=on_step_end,
                output_type="pil",
                **per_image,
                **call,
            )
    except Exception as e:  # noqa: BLE001 - the batch failed: each job records why
        return [o if o is not None else e for o in outcomes]
    inference_ms = (time.perf_counter() - t0) * 1000
    # 3. each job's images, encoded
    for k in members:
        if outcomes[k] is None:
            mine = SimpleNamespace(images=[im for im, owner in zip(out.images, owners, strict=True) if owner == k])
            outcomes[k] = image_result(Denoised(mine, inference_ms, {}), requests[k], entry, load_ms)
    return outcomes


def image_result(
    denoised: Denoised, request, entry: ModelEntry, load_ms: float, extra: list[Artifact] | None = None
) -> RunResult:
    artifacts = [
        Artifact(png(im), "image/png", "png", {"width": im.width, "height": im.height, "seed": request.seed + i})
        for i, im in enumerate(denoised.out.images)
    ]
    model = ModelRef(id=entry.id, sha256=entry.version)
    return RunResult(artifacts + (extra or []), load_ms, denoised.inference_ms, model, denoised.versions)
