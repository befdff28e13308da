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

from core.catalog import (
    CACHE_METHODS,
    ENGINE_CACHE_METHODS,
    ENGINE_SCHEDULERS,
    FAMILIES,
    FAMILY_CACHE_METHODS,
    FLOW_SCHEDULERS,
    LIMITS,
    SCHEDULERS,
    ModelKind,
    SizeRule,
    diffusers_size_rule,
    engine_size_rule,
    family_of,
    scheduler_names,
)
from core.errors import InputError
from core.schemas import NAME_PATTERN, JobType, ModelInfo, StepCache

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
    size: SizeRule = field(default_factory=lambda: SizeRule(8, 2048, 2048, 2048 * 2048))
    labels: list[str] | None = None
    schedulers: list[str] = field(default_factory=list)
    default_scheduler: str = "ddim"
    default_num_inference_steps: int = 50
    default_guidance_scale: float = 1.0
    version: str | None = None  # sha256 of the weights, computed once
    pipeline_class: str | None = None  # diffusers models
    source: str | None = None  # a local folder or a hub id, for from_pretrained
    default_num_frames: int | None = None
    max_num_frames: int | None = None  # video: the family's cap, or what the transformer's position table holds
    max_inference_steps: int = 1000
    objective: str | None = None  # engine models: "ddpm" or "flow"
    controlnet_fit: tuple | None = None  # what a ControlNet must match to condition this U-Net; None: unknown
    scheduler_class: str | None = None  # a diffusers model's own scheduler ("default"); None: unknown (a hub id)
    network: str | None = None  # engine models: "unet" or "dit"
    cache_defaults: dict[str, float] = field(default_factory=dict)  # a model's own step-cache knobs (config.json)

    @property
    def size_multiple(self) -> int:
        return self.size.multiple

    @property
    def limits_family(self) -> str:
        return family_of(self.kind, "video" in self.tasks)

    def schedulers_for(self, task: str) -> list[str]:
        """The scheduler names this model takes for ``task`` ("default": its own)."""
        if self.kind == ModelKind.engine:
            return self.schedulers
        return ["default", *scheduler_names(FAMILIES[self.pipeline_class], task)]

    def scheduler_class_of(self, name: str) -> str | None:
        """The diffusers class a scheduler name stands for with this model (``default``: its own)."""
        if name == "default":
            return self.scheduler_class
        family = FAMILIES[self.pipeline_class]
        return (FLOW_SCHEDULERS if family.flow else SCHEDULERS)[name][0]

    @property
    def cache_methods(self) -> list[StepCache]:
        """The step caching methods this model takes, each with its default knob (the model's own, else the
        catalog's)."""
        if self.kind == ModelKind.engine:
            names = ENGINE_CACHE_METHODS.get(self.network or "unet", ())
        else:
            names = FAMILY_CACHE_METHODS.get(self.pipeline_class or "", ())
        out = []
        for name in names:
            method = CACHE_METHODS[name]
            value = self.cache_defaults.get(name, method.default)
            out.append(StepCache(method=name, **{method.knob: int(value) if method.knob == "interval" else value}))
        return out

    def max_images_for(self, task: str) -> int:
        """num_images at most for ``task``: the family's limit."""
        return LIMITS[self.limits_family].max_images

    def info(self, tasks: list[str] | None = None) -> ModelInfo:
        """What GET /v1/models says of this model; ``tasks``: those it can run now (default: all it lists)."""
        tasks = self.tasks if tasks is None else tasks
        limits = LIMITS[self.limits_family]
        family = FAMILIES.get(self.pipeline_class or "")
        return ModelInfo(
            id=self.id,
            kind=f"engine-{self.objective}" if self.kind == ModelKind.engine else self.kind.value,
            tasks=tasks,
            width=self.width,
            height=self.height,
            size_multiple=self.size.multiple,
            max_width=self.size.max_width,
            max_height=self.size.max_height,
            max_pixels=self.size.max_pixels,
            square_only=self.size.square_only,
            labels=self.labels,
            schedulers=self.schedulers,
            schedulers_by_task={t: self.schedulers_for(t) for t in tasks},
            default_scheduler=self.default_scheduler,
            default_num_inference_steps=self.default_num_inference_steps,
            default_guidance_scale=self.default_guidance_scale,
            max_inference_steps=min(self.max_inference_steps, limits.max_steps),
            max_num_images=limits.max_images,
            max_num_images_by_task={t: self.max_images_for(t) for t in tasks},
            default_num_frames=self.default_num_frames,
            num_frames_step=family.frames_step if family and family.video else None,
            max_num_frames=self.max_num_frames,
            pipeline_class=self.pipeline_class,
            cache_methods=self.cache_methods,
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
    levels = max(len(net.get("channel_mult", [1])) - 1, 0)  # a U-Net's downsamplings
    kind = "flow" if sched.get("kind") == "flow" else "ddpm"
    return ModelEntry(
        id=model_id,
        path=path,
        kind=ModelKind.engine,
        objective=kind,
        tasks=[JobType.txt2img.value],
        width=size,
        height=size,
        size=engine_size_rule(size, levels, dit="dit" in config),
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
        network="dit" if "dit" in config else "unet",
        cache_defaults=_cache_defaults(config.get("cache_defaults")),
    )


def _cache_defaults(given: object) -> dict[str, float]:
    """A model's own step-cache knobs (config.json ``cache_defaults``: ``{"deep": 2}``), those in range only."""
    out: dict[str, float] = {}
    for name, value in (given or {}).items() if isinstance(given, dict) else ():
        method = CACHE_METHODS.get(name)
        if method and isinstance(value, (int, float)) and method.low <= value <= method.high:
            out[name] = float(value)
        else:
            log.warning("cache_defaults: skipped %r=%r (not a method with a knob in range)", name, value)
    return out


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


@dataclass(frozen=True)
class Network:
    """What the size rule of a diffusers model reads from its configs (a hub id: the family's usual values)."""

    vae_scale: int = 8
    patch: int = 1
    sample_size: int | None = None  # the denoiser's native latent size, if it says
    max_patches: int | None = None  # patches a side (or frames) its position table holds
    controlnet_fit: tuple | None = None
    scheduler_class: str | None = None


def read_network(path: Path, default_patch: int) -> Network:
    vae = _json(path / "vae" / "config.json")
    scale = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1) if "block_out_channels" in vae else 8
    if vae.get("_class_name") == "AutoencoderKLWan":
        scale = 8
    unet = _json(path / "unet" / "config.json")
    den = unet or _json(path / "transformer" / "config.json")
    patch = den.get("patch_size") or default_patch
    patch = patch[-1] if isinstance(patch, (list, tuple)) else patch  # (frames, height, width): Wan's
    sample = den.get("sample_size")
    fit = controlnet_fit(unet) if unet else None
    return Network(
        vae_scale=scale,
        patch=max(1, int(patch)),
        sample_size=sample if isinstance(sample, int) else None,
        max_patches=den.get("pos_embed_max_size") or den.get("rope_max_seq_len"),
        controlnet_fit=fit,
        scheduler_class=_json(path / "scheduler" / "scheduler_config.json").get("_class_name"),
    )


def controlnet_fit(config: dict) -> tuple:
    """What a ControlNet conditions: the U-Net's cross-attention width and added embeddings (SDXL's text_time)."""
    return config.get("cross_attention_dim"), config.get("addition_embed_type")


def diffusers_entry(
    model_id: str, pipeline_class: str, source: str, path: Path | None, overrides: dict
) -> ModelEntry | None:
    family = FAMILIES.get(pipeline_class)
    if family is None:
        return None
    net = read_network(path, family.patch) if path is not None else Network(patch=family.patch)
    rule = diffusers_size_rule(family, net.vae_scale, net.patch, net.max_patches)
    width, height = family.default_size
    if net.sample_size is not None and not family.video:
        width = height = net.sample_size * net.vae_scale
    width, height = int(overrides.get("width", width)), int(overrides.get("height", height))
    if rule.why_not(width, height):  # a native size is one the model can draw: the nearest below on its step
        fixed = rule.round_down(width, height)
        log.warning("model %r: native size %dx%d is not one it draws; %dx%d instead", model_id, width, height, *fixed)
        width, height = fixed
    max_frames = family.max_frames
    if family.video and net.max_patches is not None:  # the position table also counts latent frames
        by_table = (net.max_patches - 1) * family.frames_step + 1
        max_frames = by_table if max_frames is None else min(max_frames, by_table)
    return ModelEntry(
        id=model_id,
        path=path or Path(source),
        kind=ModelKind.diffusers,
        tasks=list(family.tasks),
        width=width,
        height=height,
        size=rule,
        schedulers=["default", *scheduler_names(family)],  # default: the model's own scheduler
        default_scheduler=overrides.get("scheduler", "default"),
        default_num_inference_steps=int(overrides.get("num_inference_steps", family.steps)),
        default_guidance_scale=float(overrides.get("guidance_scale", family.guidance)),
        version=_folder_version(path) if path is not None else f"hub:{source}",
        pipeline_class=pipeline_class,
        source=source,
        default_num_frames=overrides.get("num_frames", 17 if family.video else None),
        max_num_frames=max_frames,
        max_inference_steps=500,  # diffusers schedulers with steps_offset cannot take all 1000 training steps
        controlnet_fit=net.controlnet_fit,
        scheduler_class=net.scheduler_class,
    )


def read_diffusers_entry(path: Path) -> ModelEntry | None:
    index = _json(path / "model_index.json")
    if not index.get("_class_name"):
        return None
    return diffusers_entry(path.name, index["_class_name"], str(path), path, _json(path / "diffuserve.json"))


@dataclass
class Scan:
    """What one scan of the models file and the folders found (later finds win on a name clash)."""

    entries: dict[str, ModelEntry] = field(default_factory=dict)
    controlnets: dict[str, str] = field(default_factory=dict)  # name -> folder or hub id
    controlnet_fits: dict[str, tuple | None] = field(default_factory=dict)  # what each conditions; None: unknown
    preprocessors: dict[str, str] = field(default_factory=dict)
    loras: dict[str, Path] = field(default_factory=dict)

    def read_models_file(self, config_file: Path) -> None:
        """Hub ids named in MODELS_CONFIG (a hub ControlNet's fit is unknown until it loads: it fits any base)."""
        cfg = _json(config_file)
        for mid, spec in (cfg.get("models") or {}).items():
            if not served_name(mid, "model", config_file):
                continue
            e = diffusers_entry(mid, spec.get("pipeline", ""), spec.get("hub_id", ""), None, spec)
            if e is not None and spec.get("hub_id"):
                self.entries[mid] = e
        for name, spec in (cfg.get("controlnets") or {}).items():
            if spec.get("hub_id") and served_name(name, "ControlNet", config_file):
                self.controlnets[name], self.controlnet_fits[name] = spec["hub_id"], None
        for name, spec in (cfg.get("preprocessors") or {}).items():
            if spec.get("hub_id"):
                self.preprocessors[name] = spec["hub_id"]

    def read_root(self, root: Path) -> None:
        """Every model folder under ``root``, then its ``loras/``."""
        for p in sorted(root.iterdir()):
            if not p.is_dir() or not any((p / f).is_file() for f in ("config.json", "model_index.json")):
                continue
            if served_name(p.name, "model folder", root):  # before its weights are hashed
                self.read_folder(p)
        if (root / "loras").is_dir():
            for f in sorted((root / "loras").glob("*.safetensors")):
                if served_name(f.stem, "LoRA", f):
                    self.loras[f.stem] = f

    def read_folder(self, p: Path) -> None:
        entry = read_engine_entry(p) or read_diffusers_entry(p)
        if entry is not None:
            self.entries[entry.id] = entry
            return
        config = _json(p / "config.json")
        if config.get("_class_name") == "ControlNetModel":
            self.controlnets[p.name], self.controlnet_fits[p.name] = str(p), controlnet_fit(config)
        elif any(a.endswith("ForDepthEstimation") for a in config.get("architectures", [])):
            self.preprocessors["depth"] = str(p)  # a transformers depth model (Depth Anything, DPT)

    def fits(self, controlnet: str, entry: ModelEntry) -> bool:
        """``controlnet`` can condition ``entry``'s U-Net (either one's fit unknown: assumed so)."""
        fit = self.controlnet_fits.get(controlnet)
        return fit is None or entry.controlnet_fit is None or fit == entry.controlnet_fit


class ModelRegistry:
    """Models found under a list of folders (later folders win on a name clash). Thread-safe; rescans on demand."""

    def __init__(self, roots: list[str | Path], config_file: str | Path | None = None):
        self.roots = [Path(r) for r in roots if r]
        self.config_file = Path(config_file) if config_file else None
        self._lock = threading.Lock()
        self._scan = Scan()
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
        """Rescan when a config, weight file or the models file changed since the last scan."""
        sig = self._signature()
        if sig == self._sig:
            return
        scan = Scan()
        if self.config_file and self.config_file.is_file():
            scan.read_models_file(self.config_file)
        for root in self.roots:
            if root.is_dir():
                scan.read_root(root)
        with self._lock:
            self._scan, self._sig = scan, sig

    def list(self) -> list[ModelEntry]:
        self.refresh()
        with self._lock:
            return sorted(self._scan.entries.values(), key=lambda e: e.id)

    def get(self, model_id: str) -> ModelEntry:
        with self._lock:
            entry = self._scan.entries.get(model_id)
        if entry is None:
            self.refresh()
            with self._lock:
                entry = self._scan.entries.get(model_id)
        if entry is None:
            raise InputError(f"unknown model {model_id!r}; see GET /v1/models", field="model", code="unknown_model")
        return entry

    def preprocessor(self, name: str) -> str:
        """The folder or hub id of a preprocessor's model (``depth``); InputError naming ``preprocess`` when none."""
        self.refresh()
        with self._lock:
            source = self._scan.preprocessors.get(name)
        if source is None:
            raise InputError(
                f"no {name} model is installed: put a transformers depth model (Depth Anything, DPT) in MODELS_DIR "
                'or name its hub id under "preprocessors" in MODELS_CONFIG',
                field="preprocess",
                code="unknown_preprocessor",
            )
        return source

    def controlnet(self, name: str, entry: ModelEntry | None = None) -> str:
        """The folder or hub id of a ControlNet; InputError naming ``controlnet`` when unknown, or when it cannot
        condition ``entry`` (a ControlNet is trained for one base: its U-Net's cross-attention and embeddings)."""
        self.refresh()
        with self._lock:
            scan = self._scan
        source = scan.controlnets.get(name)
        if source is None:
            raise InputError(f"unknown ControlNet {name!r}", field="controlnet", code="unknown_controlnet")
        if entry is not None and not scan.fits(name, entry):
            fits = self.controlnets_for(entry)
            raise InputError(
                f"ControlNet {name!r} was trained for another base model than {entry.id!r}; "
                + (f"ControlNets for it: {fits}" if fits else "none installed fits it"),
                field="controlnet",
                code="unsupported_task",
            )
        return source

    def controlnet_names(self) -> list[str]:
        with self._lock:
            return sorted(self._scan.controlnets)

    def controlnets_for(self, entry: ModelEntry) -> list[str]:
        """The ControlNets that can condition ``entry``."""
        with self._lock:
            scan = self._scan
        return sorted(name for name in scan.controlnets if scan.fits(name, entry))

    def base_models_of(self, controlnet: str) -> list[str]:
        """The served models ``controlnet`` can condition."""
        with self._lock:
            scan = self._scan
        return sorted(e.id for e in scan.entries.values() if "controlnet" in e.tasks and scan.fits(controlnet, e))

    def served_tasks(self, entry: ModelEntry) -> list[str]:
        """The tasks ``entry`` can run here: its own, less controlnet when no installed ControlNet fits it."""
        return [t for t in entry.tasks if t != "controlnet" or self.controlnets_for(entry)]

    def lora(self, name: str) -> Path | None:
        with self._lock:
            return self._scan.loras.get(name)

    def lora_names(self) -> list[str]:
        with self._lock:
            return sorted(self._scan.loras)
