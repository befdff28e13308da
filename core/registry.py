"""The model registry: what can be served, read from folders without loading any weights (torch-free).

A folder is scanned for sub-folders that hold a model:
- an engine checkpoint (``config.json`` with ``_class_name: DDPMEngineModel``): kind ``ddpm``, task txt2img;
- a diffusers pipeline (``model_index.json``): served by the diffusers executors (their own issue).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InputError
from core.schemas import JobType, ModelInfo

ENGINE_CLASS = "DDPMEngineModel"
ENGINE_SCHEDULERS = {"ddpm": ["ddim", "ddpm"], "flow": ["euler"]}


@dataclass
class ModelEntry:
    id: str
    path: Path
    kind: str
    tasks: list[str]
    width: int
    height: int
    size_multiple: int = 8
    labels: list[str] | None = None
    schedulers: list[str] = field(default_factory=list)
    default_scheduler: str = "ddim"
    default_num_inference_steps: int = 50
    default_guidance_scale: float = 1.0
    version: str | None = None  # sha256 of the weights, computed once

    def info(self) -> ModelInfo:
        return ModelInfo(
            id=self.id,
            kind=self.kind,
            tasks=self.tasks,
            width=self.width,
            height=self.height,
            labels=self.labels,
            schedulers=self.schedulers,
            default_scheduler=self.default_scheduler,
            default_num_inference_steps=self.default_num_inference_steps,
            default_guidance_scale=self.default_guidance_scale,
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


def read_engine_entry(path: Path) -> ModelEntry | None:
    try:
        config = json.loads((path / "config.json").read_text())
        sched = json.loads((path / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("_class_name") != ENGINE_CLASS:
        return None
    unet = config.get("unet") or {}
    size = int(unet.get("sample_size", 16))
    levels = max(len(unet.get("channel_mult", [1])) - 1, 0)
    kind = "flow" if sched.get("kind") == "flow" else "ddpm"
    weights = path / "model.safetensors"
    return ModelEntry(
        id=path.name,
        path=path,
        kind=f"engine-{kind}",
        tasks=[JobType.txt2img.value],
        width=size,
        height=size,
        size_multiple=2**levels,
        labels=config.get("labels"),
        schedulers=ENGINE_SCHEDULERS[kind],
        default_scheduler=ENGINE_SCHEDULERS[kind][0],
        default_num_inference_steps=int(config.get("default_num_inference_steps", 50)),
        default_guidance_scale=float(config.get("default_guidance_scale", 1.0)),
        version=_sha256(weights) if weights.is_file() else None,
    )


class ModelRegistry:
    """Models found under a list of folders (later folders win on a name clash). Thread-safe; rescans on demand."""

    def __init__(self, roots: list[str | Path]):
        self.roots = [Path(r) for r in roots if r]
        self._lock = threading.Lock()
        self._entries: dict[str, ModelEntry] = {}
        self._sig: tuple = ()
        self.refresh()

    def _signature(self) -> tuple:
        sig = []
        for root in self.roots:
            if root.is_dir():
                for p in sorted(root.iterdir()):
                    cfg = p / "config.json"
                    if cfg.is_file():
                        w = p / "model.safetensors"
                        sig.append((str(p), cfg.stat().st_mtime_ns, w.stat().st_mtime_ns if w.is_file() else 0))
        return tuple(sig)

    def refresh(self) -> None:
        sig = self._signature()
        if sig == self._sig:
            return
        entries: dict[str, ModelEntry] = {}
        for root in self.roots:
            if not root.is_dir():
                continue
            for p in sorted(root.iterdir()):
                if p.is_dir():
                    entry = read_engine_entry(p)
                    if entry is not None:
                        entries[entry.id] = entry
        with self._lock:
            self._entries, self._sig = entries, sig

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
