"""The warm cache: shared components, 0 ms warm hits, and eviction that really frees memory."""

import gc

import psutil
import pytest

from core.jobs import lifecycle
from core.jobs.execute import execute_job
from core.jobs.store import MemoryJobStore
from core.pipelines.cache import module_bytes
from core.registry import ModelRegistry
from core.runner import Runner
from core.schemas import JobStatus, JobType
from core.storage import LocalStorage


class NoQueue:
    def enqueue(self, job_id, queue):
        pass


def _job(model, prompt="a cat", **extra):
    return lifecycle.new_job(JobType.txt2img, {"model": model, "prompt": prompt, "negative_prompt": "", "width": 64, "height": 64,
                                              "num_inference_steps": 1, "guidance_scale": 5.0, "scheduler": "default",
                                              "seed": 1, "num_images": 1, "loras": [], **extra}, "t")


def test_task_pipelines_share_the_cached_weights(tiny_models_dir):
    runner = Runner(ModelRegistry([tiny_models_dir]), device="cpu", torch_threads=1)
    entry = runner.registry.get("tiny-sd")
    base, cold = runner.diffusers.base_pipeline(entry)
    again, warm = runner.diffusers.base_pipeline(entry)
    assert again is base and cold > 0 and warm == 0
    import diffusers

    inpaint = diffusers.AutoPipelineForInpainting.from_pipe(base)
    assert inpaint.unet is base.unet and inpaint.vae is base.vae  # no second copy of the weights


def test_rss_stays_flat_over_50_jobs_cycling_3_models(tiny_models_dir, tmp_path):
    registry = ModelRegistry([tiny_models_dir])
    one = module_bytes(Runner(registry, device="cpu").diffusers.base_pipeline(registry.get("tiny-sd"))[0])
    # a budget that holds about two of the three models, so the cycle evicts and reloads all the time
    runner = Runner(registry, device="cpu", torch_threads=1, pipeline_budget_bytes=int(one * 2.2))
    store, storage = MemoryJobStore(), LocalStorage(tmp_path, "k")
    models = ["tiny-sd", "tiny-sdxl", "tiny-sd-inpaint"]
    proc = psutil.Process()
    rss = []
    for i in range(50):
        model = models[i % 3]
        job = _job(model) if model != "tiny-sd-inpaint" else None
        if job is None:  # the inpainting model serves inpaint only
            from tests.api.helpers import data_uri
            from tests.api.test_pipelines import mask, rgb

            job = lifecycle.new_job(JobType.inpaint, {**_job(model).input, "image": data_uri(rgb()),
                                                      "mask_image": data_uri(mask()), "strength": 1.0}, "t")
        store.create(job)
        done = execute_job(job.id, store, storage, lambda: runner, "w")
        assert done.status == JobStatus.succeeded, done.error
        if i % 3 == 2:
            gc.collect()
            rss.append(proc.memory_info().rss)
    assert runner.diffusers.cache.evictions >= 40
    assert len(runner.diffusers.cache.keys()) <= 2
    first, last = rss[0], rss[-1]
    print(f"RSS after the first cycle {first / 2**20:.1f} MiB, after 50 jobs {last / 2**20:.1f} MiB")
    assert last <= first * 1.10
