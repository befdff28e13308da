"""Attack: tenants A and B each train a LoRA named ``style``; B's request drawn in one batch with A's must not carry
A's private fine-tune (finding 1). The batch key holds what changes pixels, resolved: the LoRA's owner and weights
version, the model's owner and weights version; a batched image equals its request drawn alone, for any mix."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core import tenant_models
from core.jobs import lifecycle
from core.jobs.execute import compatible_queued, execute_batch, execute_job
from core.jobs.store import memory_store
from core.registry import ModelRegistry
from core.schemas import JobStatus, JobType
from core.storage import LocalStorage


class NoQueue:
    def enqueue(self, job_id, queue):
        pass


def lora_file(base: Path, seed: int, dest: Path) -> Path:
    """A random, clearly non-zero LoRA for the tiny SD pipeline, saved as diffusers saves one."""
    import diffusers
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(base)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    )
    for n, p in pipe.unet.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    tmp = dest.parent / f".tmp-{seed}"
    diffusers.StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers)
    dest.parent.mkdir(parents=True, exist_ok=True)
    (tmp / "pytorch_lora_weights.safetensors").rename(dest)
    shutil.rmtree(tmp)
    return dest


@pytest.fixture(scope="module")
def world(tiny_models_dir, tmp_path_factory):
    """One worker's engines over tiny-sd and a shared LoRA ``style`` in MODELS_DIR/loras; tenants ``a`` and ``b``
    each registered their own ``style`` (other weights); tenant ``c`` has none and gets the shared one."""
    from core.runner import Engines

    root = tmp_path_factory.mktemp("batch-isolation")
    lora_file(tiny_models_dir / "tiny-sd", 3, root / "shared" / "loras" / "style.safetensors")
    store, storage = memory_store(), LocalStorage(root / "files", "k")
    for tenant, seed in (("a", 1), ("b", 2)):
        folder = root / f"lora-{tenant}"
        lora_file(tiny_models_dir / "tiny-sd", seed, folder / "pytorch_lora_weights.safetensors")
        tenant_models.publish(store.registrations, storage, tenant, "lora", "style", folder, f"job_train_{tenant}")
    registry = ModelRegistry([tiny_models_dir, root / "shared"])
    engines = Engines(registry, device="cpu", torch_threads=1, cache_dir=root / "cache")
    return {"store": store, "storage": storage, "engines": engines, "alone": {}}


def submit(store, tenant: str, prompt: str, seed: int, lora: float | None) -> str:
    data = {
        "model": "tiny-sd",
        "prompt": prompt,
        "negative_prompt": "",
        "width": 32,
        "height": 32,
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
        "scheduler": "ddim",
        "seed": seed,
        "num_images": 1,
        "loras": [] if lora is None else [{"name": "style", "scale": lora}],
        "timeout_s": 300,
    }
    job, _ = lifecycle.submit(store, NoQueue(), lifecycle.new_job(JobType.txt2img, data, tenant))
    return job.id


def pixels(world, job) -> np.ndarray:
    assert job.status == JobStatus.succeeded, job.error
    return np.asarray(Image.open(io.BytesIO(world["storage"].get(job.output[0].key)))).astype(int)


def alone(world, tenant: str, prompt: str, seed: int, lora: float | None) -> np.ndarray:
    """The request drawn by itself (cached per request)."""
    key = (tenant, prompt, seed, lora)
    if key not in world["alone"]:
        store = world["store"]
        job_id = submit(store, tenant, prompt, seed, lora)
        world["alone"][key] = pixels(world, execute_job(job_id, store, world["storage"], lambda: world["engines"], "w"))
    return world["alone"][key]


def batch_sizes(store) -> tuple[int, int]:
    _, hists = store.limits.metrics_snapshot()
    h = hists.get(("diffuserve_batch_size", (("type", "txt2img"),)), {"count": 0, "sum": 0})
    return h["count"], h["sum"]


def test_two_tenants_same_lora_name_in_one_batch_each_get_their_own(world):
    store = world["store"]
    a = alone(world, "a", "a red house", 7, 1.0)
    b = alone(world, "b", "a red house", 7, 1.0)
    shared = alone(world, "c", "a red house", 7, 1.0)
    # the three LoRAs named `style` draw clearly different images: the attack is visible if it succeeds
    assert np.abs(a - b).max() > 20 and np.abs(a - shared).max() > 20 and np.abs(b - shared).max() > 20
    before = batch_sizes(store)
    ids = [submit(store, t, "a red house", 7, 1.0) for t in ("a", "b", "c", "a")]
    done = execute_batch(ids, store, world["storage"], lambda: world["engines"], "w")
    for job, own in zip(done, (a, b, shared, a), strict=True):
        assert np.abs(pixels(world, job) - own).max() <= 1
    count, total = batch_sizes(store)
    assert (count - before[0], total - before[1]) == (3, 4)  # a's two jobs shared one loop; b and c ran alone


def test_the_distributed_collector_never_gathers_another_tenants_lora(world):
    store, engines = world["store"], world["engines"]
    mine = submit(store, "a", "a cat", 1, 1.0)
    theirs = submit(store, "b", "a cat", 2, 1.0)
    also_mine = submit(store, "a", "a tree", 3, 1.0)
    gathered = compatible_queued(mine, store, world["storage"], engines, 8)
    assert gathered == [mine, also_mine] and theirs not in gathered
    for job_id in (mine, theirs, also_mine):  # leave nothing queued for the next test
        lifecycle.cancel(store, job_id)


def test_a_lora_retrained_after_grouping_is_not_drawn_with_the_old_batchmates(world, tiny_models_dir, tmp_path):
    """The key is checked again when the batch starts: a registration that changed in between splits it."""
    store, storage, engines = world["store"], world["storage"], world["engines"]
    ids = [submit(store, "a", "a cat", 11, 1.0), submit(store, "a", "a cat", 12, 1.0)]
    jobs = [store.jobs.get(i) for i in ids]
    ctx0 = engines_ctx(world, jobs[0])
    ctx1 = engines_ctx(world, jobs[1])
    key0 = engines._batch_key(jobs[0], ctx0)
    assert key0 is not None and key0 == engines._batch_key(jobs[1], ctx1)
    folder = tmp_path / "retrained"
    lora_file(tiny_models_dir / "tiny-sd", 9, folder / "pytorch_lora_weights.safetensors")
    old = store.registrations.registration("a", "lora", "style")
    try:
        tenant_models.publish(store.registrations, storage, "a", "lora", "style", folder, "job_retrain")
        assert engines._batch_key(jobs[0], ctx0) != key0  # the new weights version is part of the key
    finally:
        store.registrations.register("a", "lora", "style", old)
    for job_id in ids:
        lifecycle.cancel(store, job_id)


def engines_ctx(world, job, token: str = ""):
    from core.jobs.context import JobContext

    return JobContext(world["store"], job, world["storage"], token, None, world["engines"].cache_dir)


request = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # tenant
    st.sampled_from(["a red house", "a cat"]),  # prompt
    st.integers(0, 2),  # seed
    st.sampled_from([None, 1.0, 0.5]),  # no LoRA, or `style` at a scale
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mix=st.lists(request, min_size=2, max_size=6))
def test_property_any_mix_of_tenants_each_batched_image_equals_its_request_alone(world, mix):
    store = world["store"]
    ids = [submit(store, *r) for r in mix]
    done = execute_batch(ids, store, world["storage"], lambda: world["engines"], "w")
    for r, job in zip(mix, done, strict=True):
        assert np.abs(pixels(world, job) - alone(world, *r)).max() <= 1, r


def test_a_lora_registered_between_grouping_and_start_splits_the_batch(world, tiny_models_dir, tmp_path):
    """Tenants d and c both reach the shared `style` when grouped; d then trains its own before the batch starts:
    run_batch sees the keys part and draws each alone, d with its own LoRA."""
    store, storage, engines = world["store"], world["storage"], world["engines"]
    ids = [submit(store, "d", "a cat", 21, 1.0), submit(store, "c", "a cat", 22, 1.0)]
    jobs = [store.jobs.get(i) for i in ids]
    assert [len(g) for g in engines.group(jobs, lambda j: engines_ctx(world, j))] == [2]
    folder = tmp_path / "d-style"
    lora_file(tiny_models_dir / "tiny-sd", 7, folder / "pytorch_lora_weights.safetensors")
    tenant_models.publish(store.registrations, storage, "d", "lora", "style", folder, "job_train_d")
    claimed = [lifecycle.claim(store, i, "w", 60.0) for i in ids]
    outcomes = engines.run_batch(claimed, [engines_ctx(world, j, j.lease_token) for j in claimed])
    own = alone(world, "d", "a cat", 21, 1.0)  # drawn after d's registration: with d's own LoRA
    got = np.asarray(Image.open(io.BytesIO(outcomes[0].artifacts[0].data))).astype(int)
    assert np.abs(got - own).max() <= 1
    shared = np.asarray(Image.open(io.BytesIO(outcomes[1].artifacts[0].data))).astype(int)
    assert np.abs(shared - alone(world, "c", "a cat", 22, 1.0)).max() <= 1
