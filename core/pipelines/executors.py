"""Running diffusers pipelines for jobs: txt2img, img2img, inpaint, ControlNet and video.

Each task's pipeline is built per request from the warm base pipeline's components with ``from_pipe`` and a
fresh scheduler (``from_config`` of the model's own), so the cached pipeline is never mutated and no weights
are loaded twice. Image i of a job draws its noise from ``seed + i`` alone.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.catalog import FAMILIES, FLOW_SCHEDULERS, SCHEDULERS
from core.errors import JobError
from core.images import decode_data_uri
from core.jobs.execute import Artifact, RunContext, RunResult
from core.pipelines.cache import PipelineCache
from core.registry import ModelEntry, ModelRegistry
from core.schemas import JobRecord, JobType, ModelRef
from core.storage import upload_key


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


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


MAX_ADAPTERS = 8  # adapters kept loaded per pipeline (LRU)


class DiffusersExecutor:
    def __init__(self, registry: ModelRegistry, device: str, cache: PipelineCache, cache_dir: Path | None = None):
        self.registry = registry
        self.device = device
        self.cache = cache  # shared with the runner's engine models
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "diffuserve-cache"

    # -- LoRA adapters ------------------------------------------------------------------------------
    def lora_file(self, job: JobRecord, name: str, ctx: RunContext) -> tuple[str, Path]:
        """(adapter id, file) of a LoRA: the tenant's own (trained by a job) or one in MODELS_DIR/loras."""
        from core import tenant_models

        record = ctx.store.registration(job.tenant, "lora", name)
        if record:
            folder = tenant_models.materialize(ctx.storage, record, self.cache_dir)
            return f"t_{job.tenant}_{name}_{record['version'][:12]}", folder / "pytorch_lora_weights.safetensors"
        path = self.registry.lora(name)
        if path is None:
            raise JobError("unknown_lora", f"unknown LoRA {name!r}")
        return f"g_{name}_{path.stat().st_mtime_ns}", path

    def apply_loras(self, base, job: JobRecord, ctx: RunContext) -> None:
        """Activate exactly the requested adapters at their scales; with none, disable every adapter so the output
        is the base model's. Adapters load once per pipeline and stay (LRU of MAX_ADAPTERS); the base weights are
        never reloaded."""
        loras = job.input.get("loras") or []
        loaded = base.__dict__.setdefault("_diffuserve_adapters", [])
        if not loras:
            if loaded:
                base.disable_lora()
            return
        names, scales = [], []
        for ref in loras:
            adapter, path = self.lora_file(job, ref["name"], ctx)
            adapter = adapter.replace(".", "_").replace("-", "_")
            if adapter not in loaded:
                base.load_lora_weights(str(path), adapter_name=adapter)
                loaded.append(adapter)
                while len(loaded) > MAX_ADAPTERS:
                    base.delete_adapters(loaded.pop(0))
            else:
                loaded.append(loaded.pop(loaded.index(adapter)))  # most recently used last
            names.append(adapter)
            scales.append(ref["scale"])
        base.enable_lora()
        base.set_adapters(names, adapter_weights=scales)

    # -- loading ------------------------------------------------------------------------------------
    def base_pipeline(self, entry: ModelEntry):
        def load():
            import diffusers

            cls = getattr(diffusers, entry.pipeline_class)
            pipe = cls.from_pretrained(entry.source, dtype=pick_dtype(self.device, entry.pipeline_class))
            pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            return pipe

        return self.cache.get(("pipeline", entry.id, entry.version), load)

    def controlnet(self, name: str, entry: ModelEntry):
        source = self.registry.controlnet(name)

        def load():
            from diffusers import ControlNetModel

            return ControlNetModel.from_pretrained(source, dtype=pick_dtype(self.device, entry.pipeline_class)).to(
                self.device
            )

        return self.cache.get(("controlnet", name, source), load)

    def load_image(self, job: JobRecord, field: str, storage, size: tuple[int, int] | None = None, mode: str = "RGB"):
        from PIL import Image

        ref = job.input[field]
        raw = (
            decode_data_uri(ref, field, 1 << 30)
            if ref.startswith("data:")
            else storage.get(upload_key(job.tenant, ref))
        )
        image = Image.open(io.BytesIO(raw))
        image.load()
        image = image.convert(mode)
        if size and image.size != size:
            image = image.resize(size, Image.LANCZOS)
        return image

    # -- running ------------------------------------------------------------------------------------
    def run(self, job: JobRecord, entry: ModelEntry, ctx: RunContext) -> RunResult:
        import diffusers

        p = job.input
        family = FAMILIES[entry.pipeline_class]
        # 1. load (0 ms when warm) and build this task's pipeline from the cached components
        base, load_ms = self.base_pipeline(entry)
        self.apply_loras(base, job, ctx)
        scheduler = make_scheduler(p.get("scheduler"), base.scheduler, family.flow)
        size = (p["width"], p["height"])
        call: dict = {}
        extra_artifacts: list[Artifact] = []
        if job.type == JobType.txt2img or job.type == JobType.video:
            pipe = type(base).from_pipe(base, scheduler=scheduler) if hasattr(base, "from_pipe") else base
        elif job.type == JobType.img2img:
            pipe = diffusers.AutoPipelineForImage2Image.from_pipe(base, scheduler=scheduler)
            call.update(image=self.load_image(job, "image", ctx.storage, size), strength=p["strength"])
        elif job.type == JobType.inpaint:
            if "Inpaint" in type(base).__name__:
                pipe = type(base).from_pipe(base, scheduler=scheduler)
            else:
                pipe = diffusers.AutoPipelineForInpainting.from_pipe(base, scheduler=scheduler)
            call.update(
                image=self.load_image(job, "image", ctx.storage, size),
                mask_image=self.load_image(job, "mask_image", ctx.storage, size, mode="L"),
                strength=p["strength"],
            )
        elif job.type == JobType.controlnet:
            cn, cn_ms = self.controlnet(p["controlnet"], entry)
            load_ms += cn_ms
            pipe = getattr(diffusers, family.controlnet_class).from_pipe(base, controlnet=cn, scheduler=scheduler)
            control = self.load_image(job, "control_image", ctx.storage, size)
            if p["preprocess"] == "canny":
                import cv2
                from PIL import Image

                edges = cv2.Canny(np.asarray(control), p["canny_low_threshold"], p["canny_high_threshold"])
                control = Image.fromarray(np.stack([edges] * 3, axis=-1))
            call.update(image=control, controlnet_conditioning_scale=p["controlnet_conditioning_scale"])
            extra_artifacts.append(
                Artifact(
                    _png(control),
                    "image/png",
                    "png",
                    {"width": control.width, "height": control.height, "role": "control_image"},
                )
            )
        else:
            raise JobError("unsupported_task", f"{job.type.value} is not served by diffusers executors")
        pipe.set_progress_bar_config(disable=True)

        # 2. seeds: one generator per image, so image i is reproducible alone
        n = p.get("num_images", 1)
        generators = [torch.Generator("cpu").manual_seed(p["seed"] + i) for i in range(n)]

        def on_step_end(pipeline, step, timestep, kwargs):
            total = getattr(pipeline, "_num_timesteps", None) or p["num_inference_steps"]
            ctx.progress(step + 1, int(total))  # raises JobCancelled when asked to stop
            return kwargs

        call.update(
            prompt=p["prompt"],
            negative_prompt=p.get("negative_prompt") or None,
            height=size[1],
            width=size[0],
            num_inference_steps=p["num_inference_steps"],
            guidance_scale=p["guidance_scale"],
            generator=generators if n > 1 else generators[0],
            callback_on_step_end=on_step_end,
        )
        # 3. denoise
        t0 = time.perf_counter()
        with torch.inference_mode():
            if job.type == JobType.video:
                out = pipe(**call, num_frames=p["num_frames"], output_type="np")
                artifacts = self._video_artifacts(out.frames[0], p)
            else:
                out = pipe(**call, num_images_per_prompt=n, output_type="pil")
                artifacts = [
                    Artifact(
                        _png(im), "image/png", "png", {"width": im.width, "height": im.height, "seed": p["seed"] + i}
                    )
                    for i, im in enumerate(out.images)
                ]
        inference_ms = (time.perf_counter() - t0) * 1000
        return RunResult(
            artifacts + extra_artifacts, load_ms, inference_ms, ModelRef(id=entry.id, sha256=entry.version)
        )

    @staticmethod
    def _video_artifacts(frames: np.ndarray, p: dict) -> list[Artifact]:
        from diffusers.utils import export_to_video
        from PIL import Image

        frames = np.asarray(frames)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "video.mp4"
            export_to_video(list(frames), str(path), fps=p["fps"])
            mp4 = path.read_bytes()
        h, w = frames.shape[1:3]
        poster = Image.fromarray((np.clip(frames[0], 0, 1) * 255).round().astype(np.uint8))
        meta = {"width": int(w), "height": int(h), "seed": p["seed"]}
        return [
            Artifact(mp4, "video/mp4", "mp4", {**meta, "num_frames": int(frames.shape[0]), "fps": p["fps"]}),
            Artifact(_png(poster), "image/png", "png", {**meta, "role": "poster"}),
        ]
