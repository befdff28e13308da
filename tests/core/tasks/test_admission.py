"""Admission: a typed request in, the complete typed request out (the model's defaults, the seed and the timeout
filled), or a refusal that names its field. The worker parses what admission returns with the same model."""

from __future__ import annotations

import pytest

from core.errors import InputError
from core.jobs.store import memory_store
from core.registry import ModelRegistry
from core.schemas import DDPMTrainingRequest, GridRequest, JobType, Txt2ImgRequest
from core.storage import LocalStorage
from core.tasks import TASKS
from core.tasks.admission import Inputs, admit
from tests.conftest import REPO

TXT2IMG = TASKS[JobType.txt2img]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("admission")
    return Inputs(
        memory_store(),
        LocalStorage(root / "data", "k" * 32),
        ModelRegistry([REPO / "models"]),
        max_body_bytes=1 << 20,
        max_image_pixels=1 << 20,
        job_ttl_s=3600,
        grid_max_total_steps=200,
    )


def complete(inputs, task, body):
    request, model, hashes = admit(inputs, "t", task, body)
    assert type(request) is task.request
    assert all(getattr(request, f) is not None for f in task.filled), task.filled
    assert task.parse(request.model_dump(mode="json")) == request  # what the worker reads back
    return request, model


@pytest.mark.parametrize(("model", "native"), [("digits", 16), ("mnist", 28)])
def test_a_bundled_model_at_its_defaults_is_complete_at_its_native_size(inputs, model, native):
    request, ref = complete(inputs, TXT2IMG, Txt2ImgRequest(model=model, prompt="seven"))
    entry = inputs.registry.get(model)
    assert (request.width, request.height) == (native, native)
    assert request.prompt == "7"  # the label's own name
    assert request.scheduler == entry.default_scheduler
    assert request.num_inference_steps == entry.default_num_inference_steps
    assert request.timeout_s == 300 and 0 <= request.seed < 2**32
    assert ref.id == model and ref.sha256 == entry.version


def test_one_side_given_to_a_square_model_is_both(inputs):
    request, _ = complete(inputs, TXT2IMG, Txt2ImgRequest(model="mnist", prompt="1", height=56))
    assert (request.width, request.height) == (56, 56)


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"model": "mnist", "width": 30}, "width", "invalid_input"),  # mnist: multiples of 4
        ({"model": "mnist", "width": 28, "height": 56}, "height", "invalid_input"),  # square only
        ({"model": "digits", "width": 80}, "width", "invalid_input"),  # at most 4x native
        ({"model": "digits", "scheduler": "euler_a"}, "scheduler", "invalid_input"),
        ({"model": "digits", "prompt": "banana"}, "prompt", "unknown_label"),
        ({"model": "digits", "negative_prompt": "1"}, "negative_prompt", "invalid_input"),
        ({"model": "digits", "loras": [{"name": "style"}]}, "loras", "unsupported_task"),
        ({"model": "digits", "timeout_s": 3000}, "timeout_s", "invalid_input"),
        ({"model": "digits", "seed": 2**32 - 1, "num_images": 2}, "seed", "invalid_input"),
        ({"model": "nope"}, "model", "unknown_model"),
    ],
)
def test_every_refusal_names_its_field(inputs, body, field, code):
    with pytest.raises(InputError) as e:
        admit(inputs, "t", TXT2IMG, Txt2ImgRequest(**{"prompt": "1", **body}))
    assert (e.value.field, e.value.code) == (field, code)
    assert "Request" not in e.value.message and "pydantic" not in e.value.message


def test_a_task_the_model_does_not_do_is_refused_on_model(inputs):
    from core.schemas import VideoRequest

    with pytest.raises(InputError) as e:
        admit(inputs, "t", TASKS[JobType.video], VideoRequest(model="digits"))
    assert (e.value.field, e.value.code) == ("model", "unsupported_task")


def test_a_grid_is_complete_and_each_cell_is_checked(inputs):
    body = GridRequest(
        base=Txt2ImgRequest(model="digits", prompt="4"), x={"param": "num_inference_steps", "values": [2, 3]}
    )
    request, _ = complete(inputs, TASKS[JobType.grid], body)
    assert request.base.width == 16 and request.base.seed is not None
    assert request.timeout_s == 2 * 300  # grows with the cells
    cells = request.cells()
    assert [c.num_inference_steps for _, _, c in cells] == [2, 3] and {c.seed for _, _, c in cells} == {
        request.base.seed
    }
    bad = GridRequest(
        base=Txt2ImgRequest(model="digits", prompt="4"), x={"param": "scheduler", "values": ["ddim", "heun"]}
    )
    with pytest.raises(InputError) as e:
        admit(inputs, "t", TASKS[JobType.grid], bad)
    assert e.value.field == "scheduler" and "cell (1, 0)" in e.value.message
    costly = GridRequest(
        base=Txt2ImgRequest(model="digits", prompt="4"), x={"param": "num_inference_steps", "values": [150, 150]}
    )
    with pytest.raises(InputError) as e:
        admit(inputs, "t", TASKS[JobType.grid], costly)
    assert (e.value.field, e.value.code) == ("x", "too_expensive")


def test_a_trained_model_may_not_take_a_served_name_and_its_work_is_capped(inputs):
    ddpm = TASKS[JobType.ddpm_training]
    request, model = complete(inputs, ddpm, DDPMTrainingRequest(name="mine"))
    assert model is None and request.timeout_s == 4 * 3600
    with pytest.raises(InputError) as e:
        admit(inputs, "t", ddpm, DDPMTrainingRequest(name="digits"))
    assert (e.value.field, e.value.code) == ("name", "name_taken")
    with pytest.raises(InputError) as e:
        admit(
            inputs,
            "t",
            ddpm,
            DDPMTrainingRequest(name="big", max_train_steps=200_000, train_batch_size=512, resolution=64),
        )
    assert (e.value.field, e.value.code) == ("max_train_steps", "too_expensive")


def test_priority_defaults_by_task_and_is_capped_by_the_tenants_ceiling(inputs):
    from dataclasses import replace

    from core.tenants import TenantPolicy, Tenants

    request, _ = complete(inputs, TXT2IMG, Txt2ImgRequest(model="digits", prompt="1"))
    assert request.priority == "normal"
    trained, _ = complete(inputs, TASKS[JobType.ddpm_training], DDPMTrainingRequest(name="mine"))
    assert trained.priority == "low"
    with pytest.raises(InputError) as e:  # the default ceiling is normal: nobody jumps the queue unless granted
        admit(inputs, "t", TXT2IMG, Txt2ImgRequest(model="digits", prompt="1", priority="high"))
    assert e.value.field == "priority" and "normal" in e.value.message
    granted = replace(inputs, tenants=Tenants(TenantPolicy(), {"vip": TenantPolicy(max_priority="high")}))
    request, _, _ = admit(granted, "vip", TXT2IMG, Txt2ImgRequest(model="digits", prompt="1", priority="high"))
    assert request.priority == "high"


def test_tenants_config_is_read_over_the_defaults_and_a_bad_one_names_the_tenant(tmp_path):
    from core.tenants import TenantPolicy, Tenants

    path = tmp_path / "tenants.json"
    path.write_text('{"vip": {"weight": 4, "max_priority": "high"}, "batch": {"max_active_jobs": 500}}')
    tenants = Tenants.load(path, TenantPolicy(max_active_jobs=64))
    assert tenants.of("vip").weight == 4 and tenants.of("vip").max_active_jobs == 64
    assert tenants.of("batch").max_active_jobs == 500 and tenants.of("batch").max_priority == "normal"
    assert tenants.of("anyone") == TenantPolicy(max_active_jobs=64)
    path.write_text('{"vip": {"weight": -1}}')
    with pytest.raises(ValueError, match="tenant 'vip', weight"):
        Tenants.load(path, TenantPolicy())


def test_a_tenant_capped_at_low_gets_low_by_default_not_a_refusal(inputs):
    from dataclasses import replace

    from core.tenants import TenantPolicy, Tenants

    capped = replace(inputs, tenants=Tenants(TenantPolicy(max_priority="low")))
    request, _, _ = admit(capped, "t", TXT2IMG, Txt2ImgRequest(model="digits", prompt="1"))
    assert request.priority == "low"
    with pytest.raises(InputError) as e:
        admit(capped, "t", TXT2IMG, Txt2ImgRequest(model="digits", prompt="1", priority="normal"))
    assert e.value.field == "priority"


def test_a_step_cache_left_without_its_knob_takes_the_models_default(inputs):
    from core.schemas import StepCache

    request, _ = complete(inputs, TXT2IMG, Txt2ImgRequest(model="mnist", prompt="1", cache={"method": "deep"}))
    assert request.cache == inputs.registry.get("mnist").cache_methods[0] and request.cache.interval >= 2
    given, _ = complete(
        inputs, TXT2IMG, Txt2ImgRequest(model="mnist", prompt="1", cache=StepCache(method="deep", interval=4))
    )
    assert given.cache.interval == 4


def test_a_step_cache_the_model_lacks_is_refused_on_cache(inputs):
    with pytest.raises(InputError) as e:
        admit(inputs, "t", TXT2IMG, Txt2ImgRequest(model="digits", prompt="1", cache={"method": "mag"}))
    assert (e.value.field, e.value.code) == ("cache", "unsupported_task")
    assert "deep" in e.value.message and "Txt2ImgRequest" not in e.value.message
