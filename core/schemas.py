"""Request models and the job envelope: one contract for every job type. Torch-free: the gateway imports it."""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from core.catalog import CACHE_METHODS, LIMITS, MAX_TIMEOUT_S, CacheMethodName, SchedulerName

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
UPLOAD_ID_PATTERN = re.compile(r"^upl_[0-9a-f]{32}$")
MAX_SEED = 2**32 - 1
SIZE_RULE = "default: the model's native size; a multiple of its size step (8 for SD and SDXL, 16 for SD3 and Flux)"


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    def is_terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class JobType(str, Enum):
    txt2img = "txt2img"
    img2img = "img2img"
    inpaint = "inpaint"
    controlnet = "controlnet"
    video = "video"
    lora_training = "lora_training"
    ddpm_training = "ddpm_training"
    grid = "grid"


def _image_ref(value: str) -> str:
    """An image is a ``data:`` URI (base64) or the id of an upload; URLs are never fetched."""
    v = value.strip()
    if v.startswith("data:"):
        return v
    if UPLOAD_ID_PATTERN.match(v):
        return v
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", v):
        raise ValueError("URLs are not fetched; send a data: URI or the id of an upload (POST /v1/uploads)")
    raise ValueError("must be a data: URI or an upload id (upl_...)")


ImageRef = Annotated[
    str,
    AfterValidator(_image_ref),
    Field(
        min_length=1,
        max_length=40_000_000,
        description="data: URI (PNG, JPEG or WebP, base64) or upload id",
        json_schema_extra={"pattern": r"^(data:image/(png|jpeg|webp);base64,[A-Za-z0-9+/]+=*|upl_[0-9a-f]{32})$"},
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraRef(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="a registered LoRA; a name, never a path")
    scale: float = Field(1.0, ge=-4.0, le=4.0)


WebhookEvent = Literal["start", "progress", "output", "completed"]
Priority = Literal["high", "normal", "low"]


class Notified(Strict):
    """What every job request may add: a webhook (see core/webhooks.py)."""

    webhook: str | None = Field(
        None,
        max_length=2048,
        description="http(s) URL POSTed the job's events (Standard Webhooks signatures); public addresses only",
        examples=["https://example.com/hooks/diffuserve"],
    )
    webhook_events_filter: list[WebhookEvent] = Field(
        default_factory=lambda: ["completed"],
        min_length=1,
        max_length=4,
        description="which events are sent: start, progress, output, completed",
    )
    priority: Priority | None = Field(
        None,
        description=(
            "high, normal or low: higher levels start first, tenants share each level fairly, a job waiting "
            "PRIORITY_AGE_S moves up a level; default normal (trainings: low); at most the tenant's max_priority"
        ),
    )

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
        except ValueError:
            raise ValueError("not a URL: its host or port cannot be read") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        return v

    @field_validator("webhook_events_filter")
    @classmethod
    def _unique_events(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class StepCache(Strict):
    """Step caching for one request: reuse the denoiser's work between adjacent steps (faster, an approximation;
    see the quality-vs-speed table in bench/README.md). Give the method and at most its one knob (``threshold`` or
    ``interval``, as GET /v1/models lists per model); the knob left out takes the model's default."""

    method: CacheMethodName
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="first_block, mag: 0 never reuses")
    interval: int | None = Field(None, ge=1, le=20, description="deep, taylorseer: the full network every N steps")

    @model_validator(mode="after")
    def _one_knob(self) -> StepCache:
        method = CACHE_METHODS[self.method]
        other = "interval" if method.knob == "threshold" else "threshold"
        if getattr(self, other) is not None:
            raise ValueError(f"{self.method} takes {method.knob}, not {other}")
        value = getattr(self, method.knob)
        if value is not None and not method.low <= value <= method.high:
            bounds = f"[{method.low:g}, {method.high:g}]"
            raise ValueError(f"{self.method}: {method.knob} must be in {bounds}, got {value:g}")
        return self

    @property
    def value(self) -> float | int | None:
        """The method's knob, as given or filled."""
        return getattr(self, CACHE_METHODS[self.method].knob)

    def describe(self) -> str:
        return f"{self.method} {CACHE_METHODS[self.method].knob}={self.value}"


class GenerationBase(Notified):
    model: str = Field("digits", pattern=NAME_PATTERN)
    prompt: str = Field("", max_length=4000)
    negative_prompt: str = Field("", max_length=4000)
    width: int | None = Field(
        None,
        ge=8,
        le=2048,
        description=SIZE_RULE,
    )
    height: int | None = Field(
        None,
        ge=8,
        le=2048,
        description=SIZE_RULE,
    )
    num_inference_steps: int | None = Field(None, ge=1, le=1000, description="default: the model's")
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0, description="default: the model's")
    scheduler: SchedulerName | None = Field(
        None,
        description="see GET /v1/schedulers; each model accepts the ones GET /v1/models lists; default: the model's",
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="null: random; image i uses seed + i")
    timeout_s: int | None = Field(
        None, ge=1, le=MAX_TIMEOUT_S, description="past it the job fails deadline_exceeded; default and cap: per family"
    )
    preview_every: int = Field(
        0,
        ge=0,
        le=1000,
        description="every N steps a `preview` event (a small PNG of the first image) on the event stream; 0: none",
    )
    cache: StepCache | None = Field(
        None, description="step caching (off by default): the methods and defaults GET /v1/models lists per model"
    )


class Txt2ImgRequest(GenerationBase):
    num_images: int = Field(1, ge=1, le=8)
    loras: list[LoraRef] = Field(default_factory=list, max_length=8)


class Img2ImgRequest(Txt2ImgRequest):
    image: ImageRef
    strength: float = Field(0.8, ge=0.0, le=1.0)


class InpaintRequest(Txt2ImgRequest):
    image: ImageRef
    mask_image: ImageRef
    strength: float = Field(1.0, ge=0.0, le=1.0)


class ControlNetRequest(Txt2ImgRequest):
    controlnet: str = Field(pattern=NAME_PATTERN)
    control_image: ImageRef
    preprocess: Literal["canny", "depth", "none"] = Field(
        "canny", description="canny: OpenCV edges; depth: a depth-estimation model's map; none: as given"
    )
    controlnet_conditioning_scale: float = Field(1.0, ge=0.0, le=5.0)
    canny_low_threshold: int = Field(100, ge=0, le=255)
    canny_high_threshold: int = Field(200, ge=0, le=255)


class VideoRequest(GenerationBase):
    num_frames: int | None = Field(None, ge=1, le=257, description="default: the model's (e.g. 4k+1 for Wan)")
    fps: int = Field(8, ge=1, le=60)


class LoraTrainingRequest(Notified):
    base_model: str = Field(pattern=NAME_PATTERN)
    name: str = Field(pattern=NAME_PATTERN)
    dataset: str = Field(
        description="upload id of a zip of images with metadata.jsonl or .txt captions",
        json_schema_extra={"pattern": UPLOAD_ID_PATTERN.pattern},
    )
    rank: int = Field(4, ge=1, le=256)
    alpha: float | None = Field(None, gt=0, le=1024)
    learning_rate: float = Field(1e-4, gt=0, le=1.0)
    max_train_steps: int = Field(500, ge=1, le=LIMITS["lora_training"].max_steps)
    train_batch_size: int = Field(1, ge=1, le=LIMITS["lora_training"].max_images)
    resolution: int = Field(512, ge=8, le=1024, multiple_of=8)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    train_text_encoder: bool = False
    timeout_s: int | None = Field(None, ge=1, le=LIMITS["lora_training"].max_timeout_s)

    @field_validator("dataset")
    @classmethod
    def _upload(cls, v: str) -> str:
        if not UPLOAD_ID_PATTERN.match(v):
            raise ValueError("must be the id of an upload (upl_...)")
        return v


class DDPMTrainingRequest(Notified):
    name: str = Field(pattern=NAME_PATTERN)
    dataset: str = Field(
        "digits",
        description="'digits' or the upload id of an image zip",
        json_schema_extra={"pattern": r"^(digits|upl_[0-9a-f]{32})$"},
    )
    resolution: int = Field(16, ge=8, le=256)
    objective: Literal["ddpm", "flow"] = "ddpm"
    beta_schedule: Literal["linear", "cosine", "scaled_linear"] = "linear"
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    max_train_steps: int = Field(1000, ge=1, le=LIMITS["ddpm_training"].max_steps)
    train_batch_size: int = Field(64, ge=1, le=LIMITS["ddpm_training"].max_images)
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    timeout_s: int | None = Field(None, ge=1, le=LIMITS["ddpm_training"].max_timeout_s)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v != "digits" and not UPLOAD_ID_PATTERN.match(v):
            raise ValueError("must be 'digits' or the id of an upload (upl_...)")
        return v


GridParam = Literal["guidance_scale", "scheduler", "num_inference_steps", "seed", "lora_scale"]
MAX_GRID_CELLS = 64


class GridAxis(Strict):
    param: GridParam = Field(description="what varies along this axis (lora_scale: the first LoRA's scale)")
    values: list[float | int | Annotated[str, Field(max_length=64)]] = Field(min_length=1, max_length=MAX_GRID_CELLS)


class GridRequest(Notified):
    """A txt2img request drawn over one or two axes (A1111's X/Y plot): one image per cell, then a labelled contact
    sheet. Every cell is the base request with the axes' values substituted (one image each)."""

    base: Txt2ImgRequest
    x: GridAxis
    y: GridAxis | None = None
    timeout_s: int | None = Field(None, ge=1, le=MAX_TIMEOUT_S, description="the whole grid's; default: per family")

    @property
    def model(self) -> str:
        return self.base.model

    @field_validator("base")
    @classmethod
    def _base_sends_nothing(cls, v: Txt2ImgRequest) -> Txt2ImgRequest:
        if v.webhook is not None:
            raise ValueError("a grid's cells send no webhooks: set webhook on the grid itself")
        return v

    @model_validator(mode="after")
    def _cells(self) -> GridRequest:
        n = len(self.x.values) * (len(self.y.values) if self.y else 1)
        if n > MAX_GRID_CELLS:
            raise ValueError(f"a grid has at most {MAX_GRID_CELLS} cells; this one has {n}")
        if self.y is not None and self.y.param == self.x.param:
            raise ValueError("x and y must vary different parameters")
        if "lora_scale" in (self.x.param, self.y.param if self.y else None) and not self.base.loras:
            raise ValueError("lora_scale varies the first of base.loras: give one")
        return self

    def cells(self) -> list[tuple[int, int, Txt2ImgRequest]]:
        """(column, row, request) of every cell, row by row."""
        out = []
        for row, yv in enumerate(self.y.values if self.y else [None]):
            for col, xv in enumerate(self.x.values):
                data = self.base.model_dump()
                data["num_images"] = 1
                for axis, value in ((self.x, xv), (self.y, yv)):
                    if axis is None:
                        continue
                    if axis.param == "lora_scale":
                        data["loras"][0]["scale"] = value
                    else:
                        data[axis.param] = value
                out.append((col, row, Txt2ImgRequest.model_validate(data)))
        return out


class JobOptions(BaseModel):
    """What every job's request says of the job itself, read typed from a stored record (``JobRecord.options``):
    its deadline and its webhook. Every request model has these fields (``Notified`` and ``timeout_s``)."""

    model_config = ConfigDict(extra="ignore")

    timeout_s: int | None = None
    webhook: str | None = None
    webhook_events_filter: list[WebhookEvent] = Field(default_factory=lambda: ["completed"])
    priority: Priority = "normal"


class Progress(BaseModel):
    step: int = 0
    total: int = 0


class JobErrorInfo(BaseModel):
    code: str
    message: str


class Metrics(BaseModel):
    """Where a job's time went, in ms. ``total_ms`` (created to finished) is the sum of the parts: queued, the
    worker starting up (torch and the engines, for the first jobs after a start), loading or waiting for the model,
    inference, writing outputs, and ``other_ms`` (encoding, records, events)."""

    queue_ms: float | None = None
    startup_ms: float | None = None
    load_ms: float | None = None
    inference_ms: float | None = None
    upload_ms: float | None = None
    other_ms: float | None = None
    total_ms: float | None = None
    device_ms: float | None = Field(
        None,
        description="this job's share of the device's time: the time a worker ran it (a batch's split by images); "
        "what GET /v1/usage and device_seconds_per_day count",
    )


class OutputItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str | None = None
    content_type: str
    width: int | None = None
    height: int | None = None
    seed: int | None = None


class ModelRef(BaseModel):
    id: str
    sha256: str | None = None


class Registration(BaseModel):
    """A model or LoRA a tenant trained (``core/tenant_models.py``), as the job store keeps it (JSON, by tenant, kind
    and name). Extras this model does not name (a later version's) are kept, so a record read and written again loses
    nothing."""

    model_config = ConfigDict(extra="allow")

    name: str
    kind: Literal["model", "lora"]
    version: str = Field(description="sha256 of the files (their paths and bytes)")
    prefix: str = Field(description="where the files are in storage: registry/{tenant}/{kind}/{name}/{version[:16]}")
    job_id: str = Field(description="the training job that produced it")
    files: list[str] = Field(default_factory=list, description="paths under ``prefix``")
    # a model's configs (tenant_models.read_configs): the gateway validates requests with them, no file read
    config: dict[str, Any] | None = None
    scheduler_config: dict[str, Any] | None = None
    # a LoRA's base: a LoRA serves only models of the pipeline class it was trained on
    base_model: str | None = None
    base_pipeline_class: str | None = None


class WebhookAttempt(BaseModel):
    webhook_id: str
    type: str
    attempt: int
    status_code: int | None = None
    error: str | None = None
    at: datetime
    next_attempt_at: datetime | None = None


class Job(BaseModel):
    """The job envelope: only ``input`` and ``output`` vary by type."""

    id: str
    type: JobType
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress = Field(default_factory=Progress)
    input: dict[str, Any]
    output: list[OutputItem] = Field(default_factory=list)
    error: JobErrorInfo | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    model: ModelRef | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    attempts: int = 0
    input_sha256: dict[str, str] = Field(
        default_factory=dict, description="sha256 of each image input (inline images are stored as uploads)"
    )
    webhooks: list[WebhookAttempt] = Field(default_factory=list, description="webhook delivery attempts, oldest first")


class JobRecord(Job):
    """What the job store keeps: the envelope plus what only the service sees.

    Output items carry their storage ``key``; the gateway turns keys into signed URLs when it answers.
    """

    tenant: str = "default"
    cancel_requested: bool = False
    worker: str | None = None
    lease_token: str | None = None  # the owner of the current attempt; only it may report, renew or finish
    enqueued: bool = False  # the queue accepted the message; the reaper re-sends jobs that stay False
    base_url: str | None = None  # the gateway URL the job was submitted to (local output URLs in webhooks)
    via: dict[str, Any] | None = None  # the compatibility adapter it came through: {"api": "a1111" | "replicate", ...}
    queue: str = "inference"  # the queue its task waits in (``Task.queue``), where the reaper sends it again
    weight: float = 1.0  # its tenant's share of the workers when it was submitted (TENANTS_CONFIG)

    @property
    def options(self) -> JobOptions:
        """The request's deadline and webhook, typed (the whole typed request: ``TASKS[job.type].parse``)."""
        return JobOptions.model_validate(self.input)

    def public(self) -> dict[str, Any]:
        return self.model_dump(
            mode="json",
            exclude={
                "tenant",
                "cancel_requested",
                "worker",
                "lease_token",
                "enqueued",
                "base_url",
                "via",
                "queue",
                "weight",
            },
        )


class JobList(BaseModel):
    data: list[Job]
    next_offset: int | None = None


class ModelInfo(BaseModel):
    """A served model and the rules a request for it must follow (enforced at submit, a 422 naming the field)."""

    id: str
    kind: str
    tasks: list[str] = Field(description="the tasks it can run here")
    width: int | None = Field(None, description="native width: a request's default")
    height: int | None = Field(None, description="native height: a request's default")
    size_multiple: int | None = Field(None, description="width and height are multiples of it")
    max_width: int | None = None
    max_height: int | None = None
    max_pixels: int | None = Field(None, description="width x height at most")
    square_only: bool = Field(False, description="width must equal height; a missing one takes the other's value")
    labels: list[str] | None = Field(None, description="a class-conditional model's prompts")
    schedulers: list[str] = Field(default_factory=list)
    schedulers_by_task: dict[str, list[str]] | None = Field(
        None, description="the schedulers each task takes (flow img2img and inpaint: euler only)"
    )
    default_scheduler: str | None = None
    default_num_inference_steps: int | None = None
    max_inference_steps: int | None = None
    default_guidance_scale: float | None = None
    max_num_images: int | None = Field(None, description="num_images at most")
    max_num_images_by_task: dict[str, int] | None = Field(None, description="num_images at most for each task")
    default_num_frames: int | None = None
    num_frames_step: int | None = Field(None, description="video: num_frames - 1 is a multiple of it")
    max_num_frames: int | None = None
    base_models: list[str] | None = Field(None, description="a ControlNet: the served models it can condition")
    pipeline_class: str | None = None
    cache_methods: list[StepCache] = Field(
        default_factory=list, description="the step caching methods it takes, each with its default knob"
    )
    sha256: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class UploadInfo(BaseModel):
    id: str
    content_type: str
    size: int
    sha256: str | None = None
    width: int | None = None
    height: int | None = None


class UsageCounts(BaseModel):
    jobs: int
    images: int
    device_seconds: float


class UsageDay(UsageCounts):
    day: str


class UsageReport(UsageCounts):
    """The caller's own usage over the last ``days`` UTC days: in all, by model and by day (days without jobs left
    out)."""

    tenant: str
    since: str
    until: str
    by_model: dict[str, UsageCounts]
    by_day: list[UsageDay]
