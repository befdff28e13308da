"""The model registry: what can be served, read from folders without loading any weights (torch-free).

A folder is scanned for sub-folders that hold a model:
- an engine checkpoint (``config.json`` with ``_class_name: DDPMEngineModel``): kind ``engine-ddpm``, txt2img;
- a diffusers pipeline (``model_index.json``): kind ``diffusers``, tasks from its pipeline class;
- a ControlNet (``config.json`` naming ``ControlNetModel``);
- LoRAs: ``loras/*.safetensors``.
A ``diffuserve.json`` beside a model may set ``width``, ``height``, ``num_inference_steps``, ``guidance_scale``
and ``num_frames`` defaults. A models file (``MODELS_CONFIG``, JSON) can name hub ids for production::

    {"models": {"sd15": {"hub_id": "runwayml/stable-diffusion-v1-5", "pipeline": "StableDiffusionPipeline"}},
     "controlnets": {"canny": {"hub_id": "lllyasviel/sd-controlnet-canny"}},
     "preprocessors": {"depth": {"hub_id": "depth-anything/Depth-Anything-V2-Small-hf"}}}

Served names (models, ControlNets, LoRAs) follow the rule of tenants' models (``NAME_PATTERN``): a folder, file or
key named otherwise is skipped with a warning, so no name with markup or a path in it reaches a client.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from core.catalog import ENGINE_SCHEDULERS, FAMILIES, ModelKind, scheduler_names
from core.errors import InputError
from core.schemas import NAME_PATTERN, JobType, ModelInfo

ENGINE_CLASS = "DDPMEngineModel"
SERVED_NAME = re.compile(NAME_PATTERN)
log = logging.getLogger("diffuserve.registry")


def served_name(name: str, what: str, where: object) -> bool:
    """``name`` may be served (the name rule of tenants' models); a warning names what was skipped otherwise."""
    if SERVED_NAME.fullmatch(name):
        return True
    log.warning("skipped %s %r (%s): a served name is %s", what, name[:200], where, NAME_PATTERN)
    return False


@dataclass
class ModelEntry:
    id: str
    path: Path
    kind: ModelKind
    tasks: list[str]
    width: int
    height: int
    size_multiple: int = 8
    fixed_size: bool = False  # a DiT engine model draws only at the size it was trained at
    labels: list[str] | None = None
    schedulers: list[str] = field(default_factory=list)
    default_scheduler: str = "ddim"
    default_num_inference_steps: int = 50
    default_guidance_scale: float = 1.0
    version: str | None = None  # sha256 of the weights, computed once
    pipeline_class: str | None = None  # diffusers models
    source: str | None = None  # a local folder or a hub id, for from_pretrained
    default_num_frames: int | None = None
    max_inference_steps: int = 1000
    objective: str | None = None  # engine models: "ddpm" or "flow"

    def info(self) -> ModelInfo:
        return ModelInfo(
            id=self.id,
            kind=f"engine-{self.objective}" if self.kind == ModelKind.engine else self.kind.value,
            tasks=self.tasks,
            width=self.width,
            height=self.height,
            labels=self.labels,
            schedulers=self.schedulers,
            default_scheduler=self.default_scheduler,
            default_num_inference_steps=self.default_num_inference_steps,
            default_guidance_scale=self.default_guidance_scale,
            pipeline_class=self.pipeline_class,
            sha256=self.version,
        )

    def require_task(self, task: JobType) -> None:
        if task.value not in self.tasks:
            raise InputError(
                f"model {self.id!r} cannot do {task.value}; it supports {self.tasks}",
                field="model",
                code="unsupported_task",
            )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def engine_entry_from_configs(
    model_id: str, path: Path, config: dict, sched: dict, version: str | None
) -> ModelEntry | None:
    if not isinstance(config, dict) or config.get("_class_name") != ENGINE_CLASS:
        return None
    net = config.get("unet") or config.get("dit") or {}
    size = int(net.get("sample_size", 16))
    levels = max(len(net.get("channel_mult", [1])) - 1, 0)
    kind = "flow" if sched.get("kind") == "flow" else "ddpm"
    return ModelEntry(
        id=model_id,
        path=path,
        kind=ModelKind.engine,
        objective=kind,
        tasks=[JobType.txt2img.value],
        width=size,
        height=size,
        size_multiple=2**levels,
        fixed_size="dit" in config,
        labels=config.get("labels"),
        schedulers=ENGINE_SCHEDULERS[kind],
        default_scheduler=(
            config["default_sampler"]
            if config.get("default_sampler") in ENGINE_SCHEDULERS[kind]
            else ENGINE_SCHEDULERS[kind][0]
        ),
        default_num_inference_steps=int(config.get("default_num_inference_steps", 50)),
        default_guidance_scale=float(config.get("default_guidance_scale", 1.0)),
        version=version,
    )


def read_engine_entry(path: Path) -> ModelEntry | None:
    try:
        config = json.loads((path / "config.json").read_text())
        sched = json.loads((path / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("_class_name") != ENGINE_CLASS:
        return None
    weights = path / "model.safetensors"
    return engine_entry_from_configs(path.name, path, config, sched, _sha256(weights) if weights.is_file() else None)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _folder_version(path: Path) -> str:
    """A cheap version of a diffusers folder: sha256 over its config files and weight file names and sizes."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(path)}:{p.stat().st_size}".encode())
            if p.suffix == ".json":
                h.update(p.read_bytes())
    return h.hexdigest()


def diffusers_entry(
    model_id: str, pipeline_class: str, source: str, path: Path | None, overrides: dict
) -> ModelEntry | None:
    family = FAMILIES.get(pipeline_class)
    if family is None:
        return None
    width, height = family.default_size
    multiple = 8
    if path is not None:
        vae = _json(path / "vae" / "config.json")
        scale = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1) if "block_out_channels" in vae else 8
        if vae.get("_class_name") == "AutoencoderKLWan":
            scale = 8
        den = _json(path / "unet" / "config.json") or _json(path / "transformer" / "config.json")
        if isinstance(den.get("sample_size"), int) and not family.video:
            width = height = den["sample_size"] * scale
        patch = den.get("patch_size") or 1
        patch = patch[-1] if isinstance(patch, (list, tuple)) else patch
        # latents must tile the transformer's patches (Flux packs 2x2 latents)
        multiple = scale * max(1, patch) if family.video else scale * 2 if family.flow else scale
    width, height = int(overrides.get("width", width)), int(overrides.get("height", height))
    names = scheduler_names(family)
    return ModelEntry(
        id=model_id,
        path=path or Path(source),
        kind=ModelKind.diffusers,
        tasks=list(family.tasks),
        width=width,
        height=height,
        size_multiple=multiple,
        schedulers=["default", *names],  # default: the model's own scheduler
        default_scheduler=overrides.get("scheduler", "default"),
        default_num_inference_steps=int(overrides.get("num_inference_steps", family.steps)),
        default_guidance_scale=float(overrides.get("guidance_scale", family.guidance)),
        version=_folder_version(path) if path is not None else f"hub:{source}",
        pipeline_class=pipeline_class,
        source=source,
        default_num_frames=overrides.get("num_frames"),
        max_inference_steps=500,  # diffusers schedulers with steps_offset cannot take all 1000 training steps
    )


def read_diffusers_entry(path: Path) -> ModelEntry | None:
    index = _json(path / "model_index.json")
    if not index.get("_class_name"):
        return None
    return diffusers_entry(path.name, index["_class_name"], str(path), path, _json(path / "diffuserve.json"))


class ModelRegistry:
    """Models found under a list of folders (later folders win on a name clash). Thread-safe; rescans on demand."""

    def __init__(self, roots: list[str | Path], config_file: str | Path | None = None):
        self.roots = [Path(r) for r in roots if r]
        self.config_file = Path(config_file) if config_file else None
        self._lock = threading.Lock()
        self._entries: dict[str, ModelEntry] = {}
        self._controlnets: dict[str, str] = {}
        self._preprocessors: dict[str, str] = {}
        self._loras: dict[str, Path] = {}
        self._sig: tuple = ()
        self.refresh()

    def _signature(self) -> tuple:
        sig = []
        for root in self.roots:
            if root.is_dir():
                for p in sorted(root.iterdir()):
                    for name in ("config.json", "model_index.json", "diffuserve.json"):
                        cfg = p / name
                        if cfg.is_file():
                            sig.append((str(cfg), cfg.stat().st_mtime_ns))
                    w = p / "model.safetensors"
                    if w.is_file():
                        sig.append((str(w), w.stat().st_mtime_ns))
                loras = root / "loras"
                if loras.is_dir():
                    sig += [(str(f), f.stat().st_mtime_ns) for f in sorted(loras.glob("*.safetensors"))]
        if self.config_file and self.config_file.is_file():
            sig.append((str(self.config_file), self.config_file.stat().st_mtime_ns))
        return tuple(sig)

    def refresh(self) -> None:
        sig = self._signature()
        if sig == self._sig:
            return
        entries: dict[str, ModelEntry] = {}
        controlnets: dict[str, str] = {}
        preprocessors: dict[str, str] = {}
        loras: dict[str, Path] = {}
        if self.config_file and self.config_file.is_file():
            cfg = _json(self.config_file)
            for mid, spec in (cfg.get("models") or {}).items():
                if not served_name(mid, "model", self.config_file):
                    continue
                e = diffusers_entry(mid, spec.get("pipeline", ""), spec.get("hub_id", ""), None, spec)
                if e is not None and spec.get("hub_id"):
                    entries[mid] = e
            for name, spec in (cfg.get("controlnets") or {}).items():
                if spec.get("hub_id") and served_name(name, "ControlNet", self.config_file):
                    controlnets[name] = spec["hub_id"]
            for name, spec in (cfg.get("preprocessors") or {}).items():
                if spec.get("hub_id"):
                    preprocessors[name] = spec["hub_id"]
        for root in self.roots:
            if not root.is_dir():
                continue
            for p in sorted(root.iterdir()):
                if not p.is_dir() or not any((p / f).is_file() for f in ("config.json", "model_index.json")):
                    continue
                if not served_name(p.name, "model folder", root):  # before its weights are hashed
                    continue
                entry = read_engine_entry(p) or read_diffusers_entry(p)
                if entry is not None:
                    entries[entry.id] = entry
                elif _json(p / "config.json").get("_class_name") == "ControlNetModel":
                    controlnets[p.name] = str(p)
                elif any(a.endswith("ForDepthEstimation") for a in _json(p / "config.json").get("architectures", [])):
                    preprocessors["depth"] = str(p)  # a transformers depth model (Depth Anything, DPT)
            if (root / "loras").is_dir():
                for f in sorted((root / "loras").glob("*.safetensors")):
                    if served_name(f.stem, "LoRA", f):
                        loras[f.stem] = f
        with self._lock:
            self._entries, self._controlnets, self._loras, self._sig = entries, controlnets, loras, sig
            self._preprocessors = preprocessors

    def list(self) -> list[ModelEntry]:
        self.refresh()
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.id)

    def get(self, model_id: str) -> ModelEntry:
        with self._lock:
            entry = self._entries.get(model_id)
        if entry is None:
            self.refresh()
            with self._lock:
                entry = self._entries.get(model_id)
        if entry is None:
            raise InputError(f"unknown model {model_id!r}; see GET /v1/models", field="model", code="unknown_model")
        return entry

    def preprocessor(self, name: str) -> str:
        """The folder or hub id of a preprocessor's model (``depth``); InputError naming ``preprocess`` when none."""
        self.refresh()
        with self._lock:
            source = self._preprocessors.get(name)
        if source is None:
            raise InputError(
                f"no {name} model is installed: put a transformers depth model (Depth Anything, DPT) in MODELS_DIR "
                'or name its hub id under "preprocessors" in MODELS_CONFIG',
                field="preprocess",
                code="unknown_preprocessor",
            )
        return source

    def controlnet(self, name: str) -> str:
        """The folder or hub id of a ControlNet; InputError naming ``controlnet`` when unknown."""
        self.refresh()
        with self._lock:
            source = self._controlnets.get(name)
        if source is None:
            raise InputError(f"unknown ControlNet {name!r}", field="controlnet", code="unknown_controlnet")
        return source

    def controlnet_names(self) -> list[str]:
        with self._lock:
            return sorted(self._controlnets)

    def lora(self, name: str) -> Path | None:
        with self._lock:
            return self._loras.get(name)

    def lora_names(self) -> list[str]:
        with self._lock:
            return sorted(self._loras)
