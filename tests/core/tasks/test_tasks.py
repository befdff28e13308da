"""The one registry of job types: every task is routed, parsed and run through it, and each model kind it lists has
an executor on the worker."""

from __future__ import annotations

import json

import pytest

from core.catalog import ModelKind
from core.errors import RequestUnreadable
from core.jobs import lifecycle
from core.registry import ModelRegistry
from core.schemas import JobType
from core.tasks import INFERABLE, TASKS, infer
from tests.conftest import REPO


def test_every_job_type_is_one_task():
    assert set(TASKS) == set(JobType)
    assert all(t.type == job_type for job_type, t in TASKS.items())
    assert len({t.path for t in TASKS.values()}) == len(TASKS) and len({t.name for t in TASKS.values()}) == len(TASKS)


def test_every_kind_a_task_lists_has_an_executor_and_no_executor_is_left_over():
    from core.executors import EXECUTORS

    listed = {(t.type, kind) for t in TASKS.values() for kind in t.kinds}
    assert listed == set(EXECUTORS)


def test_the_routes_are_the_tasks():
    spec = json.loads((REPO / "openapi" / "openapi.json").read_text())  # kept equal to the app's by make test
    for task in TASKS.values():
        op = spec["paths"][f"/v1{task.path}"]["post"]
        assert op["operationId"] == task.name
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith(f"/{task.request.__name__}")


def test_training_tasks_wait_in_the_training_queue_and_the_record_says_so():
    assert {t.type for t in TASKS.values() if t.queue == "training"} == {JobType.lora_training, JobType.ddpm_training}
    job = lifecycle.new_job(JobType.ddpm_training, {"name": "x"}, "t", queue=TASKS[JobType.ddpm_training].queue)
    assert job.queue == "training" and "queue" not in job.public()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (set(), JobType.txt2img),
        ({"image"}, JobType.img2img),
        ({"image", "mask_image"}, JobType.inpaint),
        ({"control_image"}, JobType.controlnet),
        ({"controlnet", "image"}, JobType.controlnet),
        ({"prompt", "seed"}, JobType.txt2img),
    ],
)
def test_an_untyped_request_is_the_most_specific_task_its_fields_mark(given, expected):
    assert infer(given).type == expected


def test_an_untyped_request_for_a_video_model_is_video():
    video = ModelRegistry([REPO / "models"]).get("digits")
    video.tasks = ["video"]
    assert infer({"prompt"}, video).type == JobType.video
    assert infer({"prompt"}, ModelRegistry([REPO / "models"]).get("digits")).type == JobType.txt2img
    assert all(TASKS[t].kinds != (None,) for t in INFERABLE)


def test_the_worker_refuses_a_request_admission_did_not_complete_as_the_services_fault():
    task = TASKS[JobType.txt2img]
    for data in ({"model": "digits"}, {"model": "digits", "width": "wide"}, {"unknown": 1}):
        with pytest.raises(RequestUnreadable) as e:
            task.parse(data, "job_x")
        assert e.value.code == "internal_error" and "Txt2ImgRequest" not in e.value.message


def test_the_worker_parses_a_complete_request_to_the_tasks_model():
    complete = {
        "model": "digits",
        "prompt": "3",
        "width": 16,
        "height": 16,
        "num_inference_steps": 4,
        "guidance_scale": 1.0,
        "scheduler": "ddim",
        "seed": 1,
        "timeout_s": 300,
    }
    request = TASKS[JobType.txt2img].parse(complete)
    assert type(request) is TASKS[JobType.txt2img].request and request.width == 16 and request.num_images == 1


def test_tasks_served_by_the_engine_are_txt2img_and_grids():
    assert {t.type for t in TASKS.values() if ModelKind.engine in t.kinds} == {JobType.txt2img, JobType.grid}
