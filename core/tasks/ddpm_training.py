"""Training a model of our engine from scratch (``core/ddpm``); it is registered under the tenant's name."""

from __future__ import annotations

from core.schemas import DDPMTrainingRequest, JobType
from core.tasks.admission import Inputs, check_new_name, check_training_work, check_zip_upload
from core.tasks.base import Admitted, Task


def admit(v: Inputs, tenant: str, request: DDPMTrainingRequest, image_size: None) -> Admitted[DDPMTrainingRequest]:
    # 1. a name no served model has; 2. the whole run's work under the cap; 3. the bundled digits or a zip upload
    check_new_name(v, request.name)
    check_training_work(request.max_train_steps, request.train_batch_size, request.resolution, "ddpm_training")
    if request.dataset != "digits":
        check_zip_upload(v, tenant, request.dataset)
    return Admitted(request, None, "ddpm_training")


TASK: Task[DDPMTrainingRequest] = Task(
    type=JobType.ddpm_training,
    request=DDPMTrainingRequest,
    path="/trainings/ddpm",
    name="train_ddpm",
    summary="Queue a training job of the from-scratch engine.",
    admit=admit,
    queue="training",
    priority="low",
    kinds=(None,),
    limits="ddpm_training",
    filled=("seed", "timeout_s"),
)
