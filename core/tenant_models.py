"""Models and LoRAs that tenants trained through jobs: registered by name in the job store, files in storage.

Torch-free: the gateway resolves names with it; workers also materialise the files into a local cache.

Storage layout: ``registry/{tenant}/{kind}/{name}/{version}/{file}``. A registration record
(:class:`core.schemas.Registration`) holds the name, kind (``model`` | ``lora``), version, the files, the job that
produced it, and for models the configs the registry needs (so the gateway can validate a request without reading the
files), for LoRAs the base they were trained on. The store keeps it as JSON; every reader here parses it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from core.registry import ModelEntry, engine_entry_from_configs
from core.schemas import Registration
from core.storage import Storage

if TYPE_CHECKING:
    from core.jobs.store import Registrations


def prefix(tenant: str, kind: str, name: str, version: str) -> str:
    return f"registry/{tenant}/{kind}/{name}/{version}"


def publish(
    registrations: Registrations,
    storage: Storage,
    tenant: str,
    kind: str,
    name: str,
    folder: Path,
    job_id: str,
    extra: dict | None = None,
) -> Registration:
    """Upload every file of ``folder`` and register it under ``name`` for ``tenant`` (the last step of a training).
    A model's record also holds its configs (``read_configs``), which the gateway validates requests with; ``extra``
    adds fields (a LoRA's ``base_model`` and ``base_pipeline_class``)."""
    if kind == "model":
        extra = {**read_configs(folder), **(extra or {})}
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode())
        h.update(p.read_bytes())
    version = h.hexdigest()
    base = prefix(tenant, kind, name, version[:16])
    for p in files:
        storage.put(f"{base}/{p.relative_to(folder).as_posix()}", p.read_bytes(), "application/octet-stream")
    record = Registration.model_validate(
        {
            **(extra or {}),  # extras add fields; they never overwrite what identifies the files
            "name": name,
            "kind": kind,
            "version": version,
            "prefix": base,
            "job_id": job_id,
            "files": [p.relative_to(folder).as_posix() for p in files],
        }
    )
    registrations.register(tenant, kind, name, record.model_dump(mode="json"))
    return record


def registration(registrations: Registrations, tenant: str, kind: str, name: str) -> Registration | None:
    """The tenant's ``kind`` (``model`` | ``lora``) named ``name``, typed; None when it has none by that name."""
    record = registrations.registration(tenant, kind, name)
    return Registration.model_validate(record) if record else None


def registrations_of(registrations: Registrations, tenant: str, kind: str) -> list[Registration]:
    """Every ``kind`` the tenant registered, by name, typed."""
    return [Registration.model_validate(r) for r in registrations.registrations(tenant, kind)]


def materialize(storage: Storage, record: Registration, cache_dir: Path) -> Path:
    """Download a registered model or LoRA into ``cache_dir`` once (keyed by version) and return its folder."""
    dest = cache_dir / record.prefix
    if (dest / ".complete").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for f in record.files:
        path = tmp / f
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(storage.get(f"{record.prefix}/{f}"))
    (tmp / ".complete").write_text("ok")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def entry_from_record(record: Registration) -> ModelEntry | None:
    """The registry entry of a registered model (its path is filled in by the worker after materialising); None for
    a record that holds no engine configs."""
    if record.config is None or record.scheduler_config is None:
        return None
    return engine_entry_from_configs(
        record.name, Path(record.prefix), record.config, record.scheduler_config, record.version
    )


def tenant_model_entry(registrations: Registrations, tenant: str, name: str) -> ModelEntry | None:
    """The registry entry of a model the tenant trained, or None."""
    record = registration(registrations, tenant, "model", name)
    return entry_from_record(record) if record else None


def read_configs(folder: Path) -> dict:
    return {
        "config": json.loads((folder / "config.json").read_text()),
        "scheduler_config": json.loads((folder / "scheduler_config.json").read_text()),
    }
