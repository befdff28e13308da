"""The warm cache: shared components, 0 ms warm hits, and eviction that really frees memory."""

import gc

import psutil

from core.jobs import lifecycle
from core.jobs.execute import execute_job
from core.jobs.store import memory_store
from core.pipelines.cache import module_bytes
from core.registry import ModelRegistry
from core.runner import Engines
from core.schemas import JobStatus, JobType
from core.storage import LocalStorage


class NoQueue:
    def enqueue(self, job_id, queue):
        pass


def _job(model, prompt="a cat", **extra):
    return lifecycle.new_job(
        JobType.txt2img,
        {
            "model": model,
            "prompt": prompt,
            "negative_prompt": "",
            "width": 64,
            "height": 64,
            "num_inference_steps": 1,
            "guidance_scale": 5.0,
            "scheduler": "default",
            "seed": 1,
            "num_images": 1,
            "loras": [],
            "timeout_s": 600,
            **extra,
        },
        "t",
    )


def test_task_pipelines_share_the_cached_weights(tiny_models_dir):
    runner = Engines(ModelRegistry([tiny_models_dir]), device="cpu", torch_threads=1)
    entry = runner.registry.get("tiny-sd")
    base, cold = runner.warm.pipelines.base(entry)
    again, warm = runner.warm.pipelines.base(entry)
    assert again is base and cold > 0 and warm == 0
    import diffusers

    inpaint = diffusers.AutoPipelineForInpainting.from_pipe(base)
    assert inpaint.unet is base.unet and inpaint.vae is base.vae  # no second copy of the weights


def test_rss_stays_flat_over_50_jobs_cycling_3_models(tiny_models_dir, tmp_path):
    registry = ModelRegistry([tiny_models_dir])
    one = module_bytes(Engines(registry, device="cpu").warm.pipelines.base(registry.get("tiny-sd"))[0])
    # a budget that holds about two of the three models, so the cycle evicts and reloads all the time
    runner = Engines(registry, device="cpu", torch_threads=1, pipeline_budget_bytes=int(one * 2.2))
    store, storage = memory_store(), LocalStorage(tmp_path, "k")
    models = ["tiny-sd", "tiny-sdxl", "tiny-sd-inpaint"]
    proc = psutil.Process()
    rss = []
    for i in range(50):
        model = models[i % 3]
        job = _job(model) if model != "tiny-sd-inpaint" else None
        if job is None:  # the inpainting model serves inpaint only
            from core import uploads
            from tests.api.test_pipelines import mask, rgb

            image, mask_image = (
                uploads.save(store.retention, storage, "t", b, uploads.describe(b, "image", 10**7), 3600)["id"]
                for b in (rgb(), mask())
            )
            job = lifecycle.new_job(
                JobType.inpaint,
                {**_job(model).input, "image": image, "mask_image": mask_image, "strength": 1.0},
                "t",
            )
        store.jobs.create(job)
        done = execute_job(job.id, store, storage, lambda: runner, "w")
        assert done.status == JobStatus.succeeded, done.error
        if i % 3 == 2:
            gc.collect()
            rss.append(proc.memory_info().rss)
    assert runner.warm.cache.evictions >= 40
    assert len(runner.warm.cache.keys()) <= 2
    first, last = rss[0], rss[-1]
    print(f"RSS after the first cycle {first / 2**20:.1f} MiB, after 50 jobs {last / 2**20:.1f} MiB")
    assert last <= first * 1.10


def test_rss_stays_flat_over_50_jobs_alternating_two_loras(tiny_models_dir, dropped_loras, tmp_path):
    registry = ModelRegistry([tiny_models_dir, dropped_loras])
    runner = Engines(registry, device="cpu", torch_threads=1)
    store, storage = memory_store(), LocalStorage(tmp_path, "k")
    proc = psutil.Process()
    rss, outputs = [], {}
    for i in range(50):
        name = ("ink", "neon")[i % 2]
        job = _job("tiny-sd", loras=[{"name": name, "scale": 1.0}])
        store.jobs.create(job)
        done = execute_job(job.id, store, storage, lambda: runner, "w")
        assert done.status == JobStatus.succeeded, done.error
        outputs.setdefault(name, storage.get(done.output[0].key))
        assert storage.get(done.output[0].key) == outputs[name]  # switching adapters is exact, every time
        if i % 2 == 1:
            gc.collect()
            rss.append(proc.memory_info().rss)
    assert outputs["ink"] != outputs["neon"]
    assert len(runner.warm.cache.keys()) == 1  # the base model loaded once, never again
    print(f"RSS after the first pair {rss[0] / 2**20:.1f} MiB, after 50 jobs {rss[-1] / 2**20:.1f} MiB")
    assert rss[-1] <= rss[0] * 1.10
    base = _job("tiny-sd")
    store.jobs.create(base)
    plain = storage.get(execute_job(base.id, store, storage, lambda: runner, "w").output[0].key)
    assert plain not in outputs.values()
