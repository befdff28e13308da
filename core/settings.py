"""Settings shared by the gateway and the workers, defined once. Only the entry points (``api/config.py``,
``worker/config.py``) instantiate them, once, at start-up; everything below takes plain arguments.

``build_storage`` and ``build_registry`` turn settings into the objects both sides use, so storage and the registry
are built in one place (the worker's engines: ``worker/engines.py``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parent.parent


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    redis_url: str | None = Field(None, description="job-store Redis; default: BROKER_URL")
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_region: str | None = Field(None, validation_alias="AWS_DEFAULT_REGION")
    s3_prefix: str = ""
    url_expires_s: int = Field(3600, ge=1, le=7 * 24 * 3600)
    data_dir: Path = REPO / "data"
    models_dir: Path | None = None
    models_config: Path | None = Field(None, description="JSON file naming hub ids (see core/registry.py)")
    bundled_models_dir: Path = REPO / "models"
    pipeline_budget_mb: int | None = Field(
        None, description="memory the warm pipeline cache may hold; default 80% VRAM / 50% RAM"
    )
    warm_models: str = "digits"
    max_warm_models: int | None = Field(
        None, ge=1, description="models a worker holds warm at once, beside PIPELINE_BUDGET_MB; unset: the budget's"
    )
    affinity_wait_s: float = Field(
        30.0, ge=0, description="a worker prefers a job for its warm models over an older one up to this much older"
    )
    device: str | None = None
    torch_threads: int = 0
    lease_ttl_s: float = 15.0
    heartbeat_s: float = 3.0
    max_attempts: int = 3
    priority_age_s: float = Field(
        300.0, gt=0, description="a queued job moves up one priority level for every this many seconds it waits"
    )
    reaper_interval_s: float = 5.0
    visibility_timeout_s: int = 3600
    job_ttl_s: float = Field(
        7 * 24 * 3600, gt=0, description="a finished job, its outputs and uploads are deleted after it"
    )
    storage_retry_s: float = Field(
        30.0, ge=0, description="how long storage writes are retried before storage_unavailable"
    )
    batch_window_ms: float = Field(10.0, ge=0, le=1000, description="how long a worker gathers jobs to batch; 0: off")
    max_batch: int = Field(8, ge=1, le=64, description="jobs denoised together at most")
    fast_path: bool = Field(True, description="the lossless GPU fast path (channels_last, fused QKV) on CUDA")
    compile: bool | None = Field(
        None,
        description="torch.compile: diffusers denoisers (regionally: their repeated blocks) and the engine's networks;"
        ' unset: the diffusers side eager and each engine model as its config.json says ("compile"; absent: eager)',
    )
    cuda_graphs: bool = Field(False, description="with COMPILE=1: CUDA graphs (static shapes, one capture per size)")
    compile_backend: str = Field("inductor", description="torch.compile backend (inductor; eager/aot_eager to debug)")
    vae_tiling_above_px: int = Field(2048 * 2048, ge=1, description="VAE tiling for images above this many pixels")
    lora_max_rank: int = Field(64, ge=1, le=1024, description="with COMPILE=1: the rank of the LoRA hot-swap slots")

    @property
    def warm_model_ids(self) -> list[str]:
        return [m for m in self.warm_models.split(",") if m]


def build_storage(s: ServiceSettings, signing_key: str):
    """S3 (boto3) when S3_BUCKET is set, else local disk under DATA_DIR/files with HMAC-signed URLs."""
    from core.storage import LocalStorage

    if s.s3_bucket:
        from core.storage import S3Storage

        return S3Storage(
            s.s3_bucket,
            endpoint_url=s.s3_endpoint_url,
            region=s.s3_region,
            expires_s=s.url_expires_s,
            public_endpoint_url=s.s3_public_endpoint_url,
            prefix=s.s3_prefix,
            retry_budget_s=s.storage_retry_s,
        )
    return LocalStorage(s.data_dir / "files", signing_key, s.url_expires_s, retry_budget_s=s.storage_retry_s)


def build_registry(s: ServiceSettings):
    from core.registry import ModelRegistry

    # the single files' sha256, kept across restarts: a GB checkpoint is hashed once, not once per process start
    return ModelRegistry(
        [s.bundled_models_dir, s.models_dir], s.models_config, hash_cache=s.data_dir / "model-hashes.json"
    )
