"""Cross-request batching: compatible queued jobs share one denoising loop, and each stays its own job."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from core.contract import RunResult
from core.jobs import lifecycle
from core.jobs.context import JobContext
from core.jobs.execute import execute_batch, execute_job
from core.jobs.store import memory_store
from core.registry import ModelRegistry
from core.runner import BatchMemory
from core.schemas import JobStatus, JobType
from core.storage import LocalStorage
from tests.conftest import REPO, wait_for
from tests.core.executors.conftest import Ctx


class ListQueue:
    def enqueue(self, job_id, queue):
        pass


@pytest.fixture(scope="module")
def engines():
    from core.runner import Engines

    return Engines(ModelRegistry([REPO / "models"]), device="cpu", torch_threads=1)


def _job(store, prompt: str, seed: int, steps: int = 10, num_images: int = 1, scheduler: str = "ddim", size: int = 16):
    data = {
        "model": "digits",
        "prompt": prompt,
        "negative_prompt": "",
        "width": size,
        "height": size,
        "num_inference_steps": steps,
        "guidance_scale": 2.0,
        "scheduler": scheduler,
        "seed": seed,
        "num_images": num_images,
        "loras": [],
        "timeout_s": 300,
    }
    job, _ = lifecycle.submit(store, ListQueue(), lifecycle.new_job(JobType.txt2img, data, "t"))
    return job


def _pixels(storage, job) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(storage.get(o.key)))).astype(int) for o in job.output]


def test_an_image_amid_a_batch_equals_the_request_alone(engines, tmp_path):
    store, storage = memory_store(), LocalStorage(tmp_path, "k")
    target = _job(store, "7", 42, num_images=2)
    others = [_job(store, str(d), 100 + d) for d in range(6)]
    done = execute_batch(
        [o.id for o in others[:3]] + [target.id] + [o.id for o in others[3:]], store, storage, lambda: engines, "w"
    )
    assert all(j.status == JobStatus.succeeded for j in done)
    assert [o.seed for o in done[3].output] == [42, 43] and done[3].output[0].label == "7"
    _, hists = store.limits.metrics_snapshot()
    sizes = hists[("diffuserve_batch_size", (("type", "txt2img"),))]
    assert sizes["count"] == 1 and sizes["sum"] == 7  # one batch of the seven jobs
    alone = execute_job(_job(store, "7", 42, num_images=2).id, store, storage, lambda: engines, "w")
    for a, b in zip(_pixels(storage, done[3]), _pixels(storage, alone), strict=True):
        assert np.abs(a - b).max() <= 1
    assert done[3].metrics.inference_ms == done[0].metrics.inference_ms  # one shared loop


def test_one_bad_input_or_an_ancestral_sampler_does_not_join_or_fail_the_batch(engines, tmp_path):
    store, storage = memory_store(), LocalStorage(tmp_path, "k")
    good = [_job(store, "1", 1), _job(store, "2", 2)]
    bad = _job(store, "not-a-digit", 3)
    ancestral = _job(store, "3", 4, scheduler="ddpm")  # its step noise is per batch: it runs alone
    done = execute_batch([good[0].id, bad.id, ancestral.id, good[1].id], store, storage, lambda: engines, "w")
    assert [j.status for j in done] == [JobStatus.succeeded, JobStatus.failed, JobStatus.succeeded, JobStatus.succeeded]
    assert done[1].error.code == "unknown_label" and done[0].output and done[3].output
    _, hists = store.limits.metrics_snapshot()
    sizes = hists[("diffuserve_batch_size", (("type", "txt2img"),))]
    assert sizes["count"] == 2 and sizes["sum"] == 4  # {good, bad, good} in one batch, the ancestral one alone


def test_a_job_canceled_mid_batch_leaves_it_and_the_others_finish(engines, tmp_path):
    store, storage = memory_store(), LocalStorage(tmp_path, "k")
    jobs = [_job(store, str(d), d, steps=400) for d in range(3)]
    result: list = []
    t = threading.Thread(
        target=lambda: result.extend(execute_batch([j.id for j in jobs], store, storage, lambda: engines, "w"))
    )
    t.start()
    wait_for(lambda: store.jobs.get(jobs[1].id).progress.step >= 5, 60, what="the batch running")
    lifecycle.cancel(store, jobs[1].id)
    t.join(120)
    assert [j.status for j in result] == [JobStatus.succeeded, JobStatus.canceled, JobStatus.succeeded]
    assert result[1].progress.step < 400 and result[1].output == []
    assert result[0].progress.step == 400 and len(result[2].output) == 1


def test_diffusers_txt2img_batches_and_each_image_equals_the_request_alone(tiny_models_dir, tmp_path):
    from core.runner import Engines

    engines = Engines(ModelRegistry([tiny_models_dir]), device="cpu", torch_threads=1)
    store, storage = memory_store(), LocalStorage(tmp_path, "k")

    def sd_job(prompt: str, seed: int, num_images: int = 1, scheduler: str = "euler_a"):
        data = {
            "model": "tiny-sd",
            "prompt": prompt,
            "negative_prompt": "",
            "width": 64,
            "height": 64,
            "num_inference_steps": 3,
            "guidance_scale": 5.0,
            "scheduler": scheduler,
            "seed": seed,
            "num_images": num_images,
            "loras": [],
            "timeout_s": 300,
        }
        job, _ = lifecycle.submit(store, ListQueue(), lifecycle.new_job(JobType.txt2img, data, "t"))
        return job

    batch = [sd_job("a red house", 1), sd_job("a cat", 5, num_images=2), sd_job("a tree", 9)]
    done = execute_batch([j.id for j in batch], store, storage, lambda: engines, "w")
    assert all(j.status == JobStatus.succeeded for j in done) and [len(j.output) for j in done] == [1, 2, 1]
    _, hists = store.limits.metrics_snapshot()
    assert hists[("diffuserve_batch_size", (("type", "txt2img"),))]["sum"] == 3  # one batch (ancestral sampler too)
    alone = execute_job(sd_job("a cat", 5, num_images=2).id, store, storage, lambda: engines, "w")
    for a, b in zip(_pixels(storage, done[1]), _pixels(storage, alone), strict=True):
        assert np.abs(a - b).max() <= 1
    assert np.abs(_pixels(storage, done[0])[0] - _pixels(storage, done[2])[0]).mean() > 1  # prompts kept apart


def test_diffusers_img2img_batches_each_with_its_own_image_and_a_bad_image_fails_alone(tiny_models_dir, tmp_path):
    from core import uploads
    from core.runner import Engines

    engines = Engines(ModelRegistry([tiny_models_dir]), device="cpu", torch_threads=1)
    store, storage = memory_store(), LocalStorage(tmp_path, "k")

    def upload(color) -> str:
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), color).save(buf, format="PNG")
        data = buf.getvalue()
        return uploads.save(store.retention, storage, "t", data, uploads.describe(data, "file", 10**6), 3600)["id"]

    def i2i_job(image: str, seed: int, num_images: int = 1):
        data = {
            "model": "tiny-sd",
            "prompt": "a red house",
            "negative_prompt": "",
            "image": image,
            "strength": 0.6,
            "width": 64,
            "height": 64,
            "num_inference_steps": 4,
            "guidance_scale": 5.0,
            "scheduler": "euler",
            "seed": seed,
            "num_images": num_images,
            "loras": [],
            "timeout_s": 300,
        }
        job, _ = lifecycle.submit(store, ListQueue(), lifecycle.new_job(JobType.img2img, data, "t"))
        return job

    red, blue = upload((220, 30, 30)), upload((30, 30, 220))
    batch = [i2i_job(red, 1), i2i_job(blue, 5, num_images=2), i2i_job("upl_" + "0" * 32, 7), i2i_job(red, 9)]
    done = execute_batch([j.id for j in batch], store, storage, lambda: engines, "w")
    assert [j.status for j in done] == [JobStatus.succeeded, JobStatus.succeeded, JobStatus.failed, JobStatus.succeeded]
    assert done[2].error.code == "input_expired" and "expired" in done[2].error.message  # the missing image, alone
    _, hists = store.limits.metrics_snapshot()
    assert hists[("diffuserve_batch_size", (("type", "img2img"),))]["sum"] == 4  # one batch of four jobs
    alone = execute_job(i2i_job(blue, 5, num_images=2).id, store, storage, lambda: engines, "w")
    for a, b in zip(_pixels(storage, done[1]), _pixels(storage, alone), strict=True):
        assert np.abs(a - b).max() <= 1  # an image amid the batch equals the request alone
    # each image kept its own input: the red one equals red alone, and the input matters (blue, same seed, differs)
    red_alone = _pixels(storage, execute_job(i2i_job(red, 1).id, store, storage, lambda: engines, "w"))[0]
    blue_seed1 = _pixels(storage, execute_job(i2i_job(blue, 1).id, store, storage, lambda: engines, "w"))[0]
    assert np.abs(_pixels(storage, done[0])[0] - red_alone).max() <= 1
    assert np.abs(red_alone - blue_seed1).mean() > 1


class FakeGpuMemory(BatchMemory):
    """1,000 bytes free, and every batch peaks at ``peak_per_image`` an image (what torch.cuda would report)."""

    def __init__(self, peak_per_image: int):
        super().__init__(free_bytes=lambda: 1000)
        self.peak_per_image = peak_per_image

    @contextmanager
    def measure(self, key: tuple, images: int) -> Iterator[None]:
        yield
        self.observe(key, images, self.peak_per_image * images)


def test_on_a_gpu_a_batch_holds_only_the_images_that_fit_in_free_memory(engines, tmp_path):
    """MAX_BATCH is 8, but the last batch of this key peaked at 400 bytes an image and 1,000 bytes are free: with
    the 80% headroom two images fit, so five one-image jobs (and a two-image one) split by memory, not by count."""
    store, storage = memory_store(), LocalStorage(tmp_path, "k")
    jobs = [_job(store, "3", seed) for seed in range(5)] + [_job(store, "3", 9, num_images=2)]
    context = lambda job: JobContext(store, job, storage, "")  # noqa: E731
    saved = engines.memory
    try:
        engines.memory = BatchMemory(free_bytes=lambda: 1000)
        assert [len(g) for g in engines.group(jobs, context)] == [6]  # nothing measured yet: MAX_BATCH alone
        # what a batch of this key measured when it ran (run_batch measures, group caps: the same key)
        measured = FakeGpuMemory(peak_per_image=400)
        engines.memory = measured
        batch = [store.jobs.get(j.id) for j in jobs[:2]]
        outcomes = engines.run_batch(batch, [Ctx(), Ctx()])  # a RunContext with no store behind it
        assert all(isinstance(o, RunResult) for o in outcomes), outcomes
        assert measured.per_image  # learned under the key group() reads
        groups = engines.group(jobs, context)
        assert [[j.id for j in g] for g in groups] == [[j.id for j in jobs[i : i + 2]] for i in (0, 2, 4)][:2] + [
            [jobs[4].id],
            [jobs[5].id],
        ]
    finally:
        engines.memory = saved
    assert BatchMemory().cap(("any",)) > 1000  # on a CPU: no memory cap


def test_a_queued_request_that_does_not_parse_is_the_services_fault_not_the_clients(engines, tmp_path):
    """Admission builds the input with the worker's own model: a record that does not parse (an old one, a version
    skew) fails internal_error, never invalid_input with a validator's text."""
    store, storage = memory_store(), LocalStorage(tmp_path, "k")
    job = _job(store, "7", 1)
    store.jobs.update(job.id, lambda j: (j.input.update(width="sixteen"), j)[1])
    done = execute_job(job.id, store, storage, lambda: engines, "w")
    assert done.status == JobStatus.failed and done.error.code == "internal_error", done.error
    assert "Txt2ImgRequest" not in done.error.message and "validation error" not in done.error.message


def _sides(limit: int, multiple: int = 4, top: int = 64) -> tuple[int, int]:
    """(the largest square side digits draws within ``limit`` pixels, the smallest one past it)."""
    sides = range(multiple, top + 1, multiple)
    return max(side for side in sides if side * side <= limit), min(side for side in sides if side * side > limit)


def test_a_job_whose_family_and_size_do_not_pay_is_never_grouped(engines, tmp_path):
    """The catalog marks where a batch stops paying on a CPU (BATCHING_PAYS_UP_TO, from bench/throughput.py): engine
    jobs one size step past the limit share a key's every field and still run alone, each its own batch of one."""
    from core.catalog import BATCHING_PAYS_UP_TO, batching_pays

    _, past = _sides(BATCHING_PAYS_UP_TO["cpu"]["engine"])
    assert not batching_pays("cpu", "engine", past * past)
    store, storage = memory_store(), LocalStorage(tmp_path, "k")
    jobs = [_job(store, "3", seed, steps=2, size=past) for seed in range(3)]
    context = lambda job: JobContext(store, job, storage, "")  # noqa: E731
    assert [len(g) for g in engines.group(jobs, context)] == [1, 1, 1]
    done = execute_batch([j.id for j in jobs], store, storage, lambda: engines, "w")
    assert all(j.status == JobStatus.succeeded for j in done)
    _, hists = store.limits.metrics_snapshot()
    sizes = hists[("diffuserve_batch_size", (("type", "txt2img"),))]
    assert sizes["count"] == 3 and sizes["sum"] == 3  # three runs of one job


def test_a_job_whose_family_and_size_pay_is_still_grouped(engines, tmp_path):
    """At the catalog's limit (and on a device it does not list) a batch still pays: the same jobs share one loop."""
    from core.catalog import BATCHING_PAYS_UP_TO, batching_pays

    within, _ = _sides(BATCHING_PAYS_UP_TO["cpu"]["engine"])
    assert batching_pays("cpu", "engine", within * within) and batching_pays("cuda:0", "engine", 1 << 30)
    store, storage = memory_store(), LocalStorage(tmp_path, "k")
    jobs = [_job(store, "3", seed, steps=2, size=within) for seed in range(3)]
    context = lambda job: JobContext(store, job, storage, "")  # noqa: E731
    assert [len(g) for g in engines.group(jobs, context)] == [3]
    done = execute_batch([j.id for j in jobs], store, storage, lambda: engines, "w")
    assert all(j.status == JobStatus.succeeded for j in done)
    _, hists = store.limits.metrics_snapshot()
    sizes = hists[("diffuserve_batch_size", (("type", "txt2img"),))]
    assert sizes["count"] == 1 and sizes["sum"] == 3  # one batch of the three
