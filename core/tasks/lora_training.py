"""LoRA fine-tuning of a served model on an uploaded dataset; the adapter is registered under the tenant's name."""

from __future__ import annotations

from core.catalog import LORA_TRAINABLE
from core.errors import InputError
from core.schemas import JobType, LoraTrainingRequest, ModelRef
from core.tasks.admission import Inputs, check_training_work, check_zip_upload, model_entry
from core.tasks.base import Admitted, Task


def admit(v: Inputs, tenant: str, request: LoraTrainingRequest, image_size: None) -> Admitted[LoraTrainingRequest]:
    # 1. the base model: served or the tenant's, of a family whose LoRA training loop exists
    entry = model_entry(v, tenant, request.base_model, field="base_model")
    if entry.pipeline_class not in LORA_TRAINABLE:
        raise InputError(
            f"model {entry.id!r} cannot be fine-tuned with LoRA here; trainable: {LORA_TRAINABLE}",
            field="base_model",
            code="unsupported_task",
        )
    # 2. the whole run's work under the cap; 3. the dataset is a zip the tenant uploaded
    check_training_work(request.max_train_steps, request.train_batch_size, request.resolution, "lora_training")
    check_zip_upload(v, tenant, request.dataset)
    return Admitted(request, ModelRef(id=entry.id, sha256=entry.version), "lora_training")


TASK: Task[LoraTrainingRequest] = Task(
    type=JobType.lora_training,
    request=LoraTrainingRequest,
    path="/trainings/lora",
    name="train_lora",
    summary="Queue a LoRA fine-tuning job on an uploaded dataset.",
    admit=admit,
    queue="training",
    priority="low",
    limits="lora_training",
    filled=("seed", "timeout_s"),
)
