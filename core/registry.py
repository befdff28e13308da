"""The model registry: what can be served, read from folders without loading any weights (torch-free).

A folder is scanned for sub-folders that hold a model:
- an engine checkpoint (``config.json`` with ``_class_name: DDPMEngineModel``): kind ``engine-ddpm``, txt2img;
- a diffusers pipeline (``model_index.json``): kind ``diffusers``, tasks from its pipeline class;
- a ControlNet (``config.json`` naming ``ControlNetModel``);
- LoRAs: ``loras/*.safetensors`` (peft's or kohya's keys: diffusers' LoRA loader reads both);
- the folders of AUTOMATIC1111 (``Stable-diffusion/``, ``Lora/``, ``ControlNet/``) and of ComfyUI (``checkpoints/``,
  ``loras/``, ``controlnet/``): single-file ``.safetensors`` checkpoints, LoRAs and ControlNets, served under the
  file's stem (see ``SingleFile``; docs/model-folders.md). Only safetensors headers are read to scan; each file's
  sha256 (as A1111 and ComfyUI compute it) is hashed once and cached by path, size and mtime.
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
import os
import re
import stat
import struct
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
    compile: bool = False  # engine models: compiled unless COMPILE says otherwise (config.json "compile")
    single_file: SingleFile | None = None  # a single-file checkpoint (A1111's or ComfyUI's folders)

    @property
    def short_hash(self) -> str | None:
        """A1111's short hash: the first 10 hex digits of the sha256 (a single file's is the whole file's)."""
        return self.version[:10] if self.version and not self.version.startswith("hub:") else None

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
        compile=_compile_default(model_id, config.get("compile", False)),
    )


def _compile_default(model_id: str, given: object) -> bool:
    """An engine model's own choice (config.json ``"compile": true|false``); anything else is eager, with a warning
    (``bench/compile.py`` measures whether compiling pays for a model)."""
    if isinstance(given, bool):
        return given
    log.warning("model %s: config.json compile must be true or false (got %r): runs eager", model_id, given)
    return False


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


# -- single files: A1111's and ComfyUI's folders ------------------------------------------------------------------
CHECKPOINT_DIRS = ("Stable-diffusion", "checkpoints")  # A1111's, ComfyUI's
LORA_DIRS = ("Lora", "loras")
CONTROLNET_DIRS = ("ControlNet", "controlnet")
MAX_DEPTH = 4  # sub-folders scanned under each of them
MAX_HEADER = 8 * 2**20  # a real checkpoint's header is well under 2 MB; parsing JSON takes ~25x its size in memory
PICKLED = (".ckpt", ".pt", ".pth", ".bin")  # never unpickled: arbitrary code runs on load
CONFIG_SUFFIX = ".config"  # a diffusers config folder beside a checkpoint: <stem>.config/
SHIPPED_CONFIGS = Path(__file__).parent / "pipelines" / "single_file_configs"  # data only, read by path
# what a family's shipped config lacks (it cannot be served offline without a sidecar config folder)
NEEDS_SIDECAR = {
    "sd3": "T5's tokenizer (spiece.model) and the transformer's config",
    "flux": "T5's tokenizer (spiece.model) and the transformer's config",
}


@dataclass(frozen=True)
class SingleFile:
    """A single-file ``.safetensors`` (a checkpoint in the original layout, or a ControlNet), served under its stem.

    ``config``: a diffusers-format config folder for ``from_single_file`` — the sidecar ``<stem>.config/`` beside
    the file when there is one, else the family's shipped one (``core/pipelines/single_file_configs/<family>``)."""

    path: Path
    rel: str  # the file under its kind's folder, as A1111 titles it: "sub/name.safetensors"
    family: str  # sd1, sd2, sdxl, sd3, flux
    config: Path
    sidecar: bool  # config is the sidecar folder (its own tokenizers), not the shipped one
    sha256: str


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensors of a ``.safetensors`` file, name -> {dtype, shape, data_offsets}, from its header alone (the first
    8 bytes say how long the JSON header is): no weight is read. ValueError when it is not a safetensors file."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or n > path.stat().st_size - 8:
            raise ValueError(f"a header of {n} bytes")
        data = json.loads(f.read(n))
    if not isinstance(data, dict):
        raise ValueError("a header that is not a JSON object")
    data.pop("__metadata__", None)
    return {k: v for k, v in data.items() if isinstance(v, dict) and _is_shape(v.get("shape"))}


def _is_shape(shape: object) -> bool:
    """A tensor's shape as safetensors writes it: a short list of non-negative ints."""
    return (
        isinstance(shape, list)
        and len(shape) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    )


class TensorShapes(dict):
    """name -> an object with ``.shape`` (what ``diffusers.loaders.single_file_utils.infer_diffusers_model_type``
    reads of a checkpoint), built from a header: lets the worker cross-check our detection with diffusers'."""

    def __init__(self, header: dict[str, dict]):
        super().__init__({k: _Shape(tuple(v["shape"])) for k, v in header.items()})


@dataclass(frozen=True)
class _Shape:
    shape: tuple


UNET = "model.diffusion_model."


def detect_family(header: dict[str, dict]) -> tuple[str, str | None] | None:
    """(family, variant) of a checkpoint in the original (LDM / MMDiT / BFL) layout, from its keys and shapes: the
    same keys ``infer_diffusers_model_type`` reads, but by structure (depths and widths are not assumed, so it also
    reads small models). variant: "inpaint" (a 9-channel U-Net), "refiner" (SDXL's), or None. None: not a checkpoint
    of a family we know."""
    keys = header.keys()

    def has(*names: str) -> bool:
        return any(n in header for n in names)

    if has("double_blocks.0.img_attn.qkv.weight", UNET + "double_blocks.0.img_attn.qkv.weight"):
        return "flux", None
    if has("joint_blocks.0.context_block.attn.qkv.weight", UNET + "joint_blocks.0.context_block.attn.qkv.weight"):
        return "sd3", None
    conv_in = header.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        return None
    variant = "inpaint" if len(conv_in["shape"]) == 4 and conv_in["shape"][1] == 9 else None
    if any(k.startswith("conditioner.embedders.") for k in keys):
        if not any(k.startswith("conditioner.embedders.1.") for k in keys):
            return "sdxl", "refiner"  # one text encoder (OpenCLIP bigG) only
        return "sdxl", variant
    if any(k.startswith("cond_stage_model.model.") for k in keys):  # OpenCLIP ViT-H
        return "sd2", variant
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):  # OpenAI CLIP ViT-L
        return "sd1", variant
    width = cross_attention_width(header, UNET)
    return ({1024: "sd2", 2048: "sdxl"}.get(width or 768, "sd1"), variant)  # a U-Net without its text encoder


def cross_attention_width(header: dict[str, dict], prefix: str) -> int | None:
    """The text embedding width a U-Net (or ControlNet) cross-attends to: an ``attn2.to_k`` weight's inputs."""
    for k, v in header.items():
        if k.startswith(prefix) and k.endswith("attn2.to_k.weight") and len(v["shape"]) == 2:
            return int(v["shape"][1])
    return None


def single_file_fit(header: dict[str, dict], prefix: str) -> tuple:
    """``controlnet_fit`` of a U-Net or ControlNet in the original layout: its cross-attention width and added
    embeddings (``label_emb``: SDXL's text_time)."""
    added = "text_time" if any(k.startswith(prefix + "label_emb.") for k in header) else None
    return cross_attention_width(header, prefix), added


def is_controlnet(header: dict[str, dict]) -> str | None:
    """The key prefix of a ControlNet in the original layout ("control_model." or ""), or None."""
    for prefix in ("control_model.", ""):
        if prefix + "input_hint_block.0.weight" in header and prefix + "zero_convs.0.0.weight" in header:
            return prefix
    return None


class HashCache:
    """sha256 of whole files (as A1111 and ComfyUI compute a checkpoint's), hashed once per (path, size, mtime):
    kept in memory and, given a file, in that JSON file (so a restart does not rehash GBs either)."""

    def __init__(self, file: Path | None = None):
        self.file = file
        self._lock = threading.Lock()
        self._known: dict[str, str] = {}
        if file is not None:
            data = _json(file)
            self._known = {k: v for k, v in data.items() if isinstance(v, str) and len(v) == 64}
        self.hashed = 0  # files hashed (not found in the cache): what a test counts

    @staticmethod
    def _key(path: Path) -> str:
        st = path.stat()
        return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    def sha256(self, path: Path) -> str:
        key = self._key(path)
        with self._lock:
            known = self._known.get(key)
        if known:
            return known
        digest = _sha256(path)
        with self._lock:
            self._known[key] = digest
            self.hashed += 1
            if self.file is not None:
                self._save()
        return digest

    def _save(self) -> None:
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._known))
            tmp.replace(self.file)
        except OSError as e:  # a read-only place: the memory cache still holds
            log.warning("could not write the hash cache %s: %s", self.file, e)


def _files(folder: Path) -> list[Path]:
    """The files under ``folder`` (MAX_DEPTH levels of sub-folders), sorted by their path; sidecar config folders
    are not descended into."""
    out: list[Path] = []
    # linked sub-folders are followed (users link A1111's and ComfyUI's folders to each other); MAX_DEPTH bounds a loop
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        depth = Path(dirpath).relative_to(folder).parts
        dirnames[:] = sorted(d for d in dirnames if not d.endswith(CONFIG_SUFFIX) and not d.startswith("."))
        if len(depth) >= MAX_DEPTH:
            dirnames[:] = []
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".") and _regular(Path(dirpath) / f)]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def _regular(path: Path) -> bool:
    """A regular file (a link to one included): a dangling link, a FIFO or a device is never opened (a FIFO would
    block the scan forever)."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _weights(folder: Path, what: str) -> list[Path]:
    """The ``.safetensors`` under ``folder``; a pickled file (``.ckpt``, ``.pt``...) is skipped with a warning."""
    out = []
    for f in _files(folder):
        if f.suffix == ".safetensors":
            out.append(f)
        elif f.suffix in PICKLED:
            log.warning(
                "skipped %s %s: a pickled file (%s) can run code when loaded and is never read; "
                "convert it to .safetensors",
                what,
                f,
                f.suffix,
            )
    return out


def _files_signature(folder: Path) -> list[tuple]:
    """What tells a rescan that ``folder``'s files changed: each file's size and mtime, its sidecars' configs too."""
    if not folder.is_dir():
        return []
    sig: list[tuple] = []
    for f in _files(folder):
        try:
            st = f.stat()
        except OSError:  # gone since the walk: the next scan tells
            continue
        sig.append((str(f), st.st_size, st.st_mtime_ns))
    for d in sorted(folder.rglob("*" + CONFIG_SUFFIX)):
        if d.is_dir():
            sig += [(str(c), c.stat().st_mtime_ns) for c in sorted(d.rglob("*.json"))]
    return sig


def sidecar_config(path: Path) -> Path | None:
    folder = path.with_name(path.stem + CONFIG_SUFFIX)
    return folder if folder.is_dir() else None


@dataclass
class Scan:
    """What one scan of the models file and the folders found (later finds win on a name clash)."""

    entries: dict[str, ModelEntry] = field(default_factory=dict)
    controlnets: dict[str, str] = field(default_factory=dict)  # name -> folder or hub id
    controlnet_fits: dict[str, tuple | None] = field(default_factory=dict)  # what each conditions; None: unknown
    preprocessors: dict[str, str] = field(default_factory=dict)
    loras: dict[str, Path] = field(default_factory=dict)
    controlnet_files: dict[str, SingleFile] = field(default_factory=dict)  # the single-file ControlNets
    hashes: HashCache = field(default_factory=HashCache)

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
        """Every model folder under ``root``, then its LoRAs (``loras/``, ``Lora/``), single-file checkpoints
        (``Stable-diffusion/``, ``checkpoints/``) and ControlNets (``ControlNet/``, ``controlnet/``). Within a root a
        name is served once: a model folder first, then the files in the order above and by path (a later file of
        the same stem, e.g. in another sub-folder, is skipped with a warning); across roots the later root wins."""
        models: dict[str, str] = {}  # served name -> what took it, within this root (models, then ControlNets)
        controlnets: dict[str, str] = {}
        for p in sorted(root.iterdir()):
            if not p.is_dir() or not any((p / f).is_file() for f in ("config.json", "model_index.json")):
                continue
            if served_name(p.name, "model folder", root):  # before its weights are hashed
                self.read_folder(p)
                if p.name in self.entries and self.entries[p.name].path == p:
                    models[p.name] = str(p)
                if self.controlnets.get(p.name) == str(p):
                    controlnets[p.name] = str(p)
        loras: dict[str, str] = {}
        for f, _ in self._files_in(root, LORA_DIRS, "LoRA", loras):
            self.loras[f.stem] = f
        for f, rel in self._files_in(root, CHECKPOINT_DIRS, "checkpoint", models):
            self.read_checkpoint(f, rel)
        for f, rel in self._files_in(root, CONTROLNET_DIRS, "ControlNet", controlnets):
            self.read_controlnet_file(f, rel)

    @staticmethod
    def _files_in(root: Path, subs: tuple[str, ...], what: str, taken: dict[str, str]) -> list[tuple[Path, str]]:
        """(file, its path under its kind's folder) of the ``.safetensors`` under ``root/<sub>`` whose stem is a
        served name not yet ``taken``."""
        out = []
        for sub in subs:
            if not (root / sub).is_dir():
                continue
            for f in _weights(root / sub, what):
                if not served_name(f.stem, what, f):
                    continue
                if f.stem in taken:
                    log.warning("skipped %s %s: the name %r is taken by %s", what, f, f.stem, taken[f.stem])
                    continue
                taken[f.stem] = str(f)
                out.append((f, f.relative_to(root / sub).as_posix()))
        return out

    def _header(self, f: Path, what: str) -> dict[str, dict] | None:
        try:
            return read_safetensors_header(f)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            log.warning("skipped %s %s: not a readable safetensors file (%s)", what, f, e)
            return None

    def read_checkpoint(self, f: Path, rel: str) -> None:
        """A single-file checkpoint: its family from the header's keys, its config (the sidecar ``<stem>.config/``
        or the family's shipped one), its sha256; skipped with a warning saying why when it cannot be served."""
        header = self._header(f, "checkpoint")
        if header is None:
            return
        if is_controlnet(header) is not None:
            log.warning("skipped checkpoint %s: it is a ControlNet; put it in ControlNet/ or controlnet/", f)
            return
        found = detect_family(header)
        if found is None:
            log.warning("skipped checkpoint %s: not a Stable Diffusion 1/2/XL/3 or Flux checkpoint by its keys", f)
            return
        family, variant = found
        sidecar = sidecar_config(f)
        config = sidecar or SHIPPED_CONFIGS / (f"{family}-{variant}" if variant else family)
        pipeline_class = _json(config / "model_index.json").get("_class_name", "")
        if sidecar is None:
            why = "SDXL's refiner is not served" if variant == "refiner" else NEEDS_SIDECAR.get(family)
            if not why and not pipeline_class:
                why = "no config of it ships with diffuserve"
            if why:
                log.warning(
                    "skipped checkpoint %s (%s%s): %s; put a diffusers config folder (the model's repository "
                    "without its weights: model_index.json, each component's config, its tokenizers) beside it as %s",
                    f, family, f" {variant}" if variant else "", why, f.stem + CONFIG_SUFFIX,
                )  # fmt: skip
                return
        if pipeline_class not in FAMILIES:
            log.warning("skipped checkpoint %s: its config names %r, not a pipeline served here", f, pipeline_class)
            return
        sf = SingleFile(f, rel, family, config, sidecar is not None, self.hashes.sha256(f))
        entry = diffusers_entry(f.stem, pipeline_class, str(f), config, _json(config / "diffuserve.json"))
        if entry is None:
            return
        entry.path, entry.version, entry.single_file = f, sf.sha256, sf
        entry.controlnet_fit = single_file_fit(header, UNET) if "controlnet" in entry.tasks else None
        self.entries[entry.id] = entry

    def read_controlnet_file(self, f: Path, rel: str) -> None:
        header = self._header(f, "ControlNet")
        if header is None:
            return
        prefix = is_controlnet(header)
        if prefix is None:
            log.warning("skipped ControlNet %s: no ControlNet keys (input_hint_block, zero_convs) in it", f)
            return
        fit = single_file_fit(header, prefix)
        family = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(fit[0] or 0, "sd1")
        if fit[1] == "text_time":
            family = "sdxl"
        sidecar = sidecar_config(f)
        config = sidecar or SHIPPED_CONFIGS / "controlnet" / family
        if not (config / "config.json").is_file():
            log.warning(
                "skipped ControlNet %s (%s): no shipped config; put its diffusers config.json in %s beside it",
                f, family, f.stem + CONFIG_SUFFIX,
            )  # fmt: skip
            return
        self.controlnets[f.stem], self.controlnet_fits[f.stem] = str(f), fit
        self.controlnet_files[f.stem] = SingleFile(f, rel, family, config, sidecar is not None, self.hashes.sha256(f))

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

    def __init__(
        self, roots: list[str | Path], config_file: str | Path | None = None, hash_cache: str | Path | None = None
    ):
        """``hash_cache``: a JSON file keeping the single files' sha256 across restarts (else kept in memory)."""
        self.roots = [Path(r) for r in roots if r]
        self.config_file = Path(config_file) if config_file else None
        self.hashes = HashCache(Path(hash_cache) if hash_cache else None)
        self._lock = threading.Lock()
        self._scanning = threading.Lock()
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
                for sub in (*LORA_DIRS, *CHECKPOINT_DIRS, *CONTROLNET_DIRS):
                    sig += _files_signature(root / sub)
        if self.config_file and self.config_file.is_file():
            sig.append((str(self.config_file), self.config_file.stat().st_mtime_ns))
        return tuple(sig)

    def refresh(self) -> None:
        """Rescan when a config, weight file or the models file changed since the last scan. One scan at a time:
        callers that find a change while one runs wait for it and use its result (a new checkpoint is hashed once,
        not once per concurrent request)."""
        if self._signature() == self._sig:
            return
        with self._scanning:
            sig = self._signature()
            if sig == self._sig:  # the scan this caller waited for saw the same files
                return
            scan = Scan(hashes=self.hashes)
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

    def known(self, model_id: str) -> bool:
        """``model_id`` is served as of the last scan (no rescan: cheap enough for an event loop)."""
        with self._lock:
            return model_id in self._scan.entries

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

    def controlnet_file(self, name: str) -> SingleFile | None:
        """A single-file ControlNet's file and config (None: a folder or a hub id)."""
        with self._lock:
            return self._scan.controlnet_files.get(name)

    def controlnet_family(self, name: str) -> str | None:
        """The family a ControlNet conditions (sd1, sd2, sdxl) when its file says; None: a folder or a hub id."""
        sf = self.controlnet_file(name)
        return sf.family if sf else None

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
