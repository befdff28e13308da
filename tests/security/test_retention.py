"""Finding 10: retention deleted an upload under a queued job (its expiry was set at upload time only), so a job
accepted before the expiry and started after it failed. Uploads now live at least as long as a job that reads them;
an input that is gone all the same fails with its own code, ``input_expired``."""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from core import uploads
from core.jobs import lifecycle
from core.jobs.execute import execute_job
from core.jobs.store import memory_store
from core.registry import ModelRegistry
from core.schemas import JobStatus, JobType
from core.storage import LocalStorage, upload_key
from tests.conftest import REPO

TTL = 60.0


class NoQueue:
    def enqueue(self, job_id, queue):
        pass


def zip_upload(store, storage, tenant: str) -> str:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(4):
            img = io.BytesIO()
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(img, format="PNG")
            zf.writestr(f"img{i}.png", img.getvalue())
    data = buf.getvalue()
    return uploads.save(store.retention, storage, tenant, data, uploads.describe(data, "file", 1 << 20), TTL)["id"]


def training(store, tenant: str, dataset: str):
    data = {"name": "mine", "dataset": dataset, "resolution": 16, "max_train_steps": 1, "train_batch_size": 4}
    data.update(seed=1, timeout_s=600)  # as admission completes it
    job, _ = lifecycle.submit(store, NoQueue(), lifecycle.new_job(JobType.ddpm_training, data, tenant))
    return job


def exists(storage, tenant: str, upload_id: str) -> bool:
    try:
        storage.get(upload_key(tenant, upload_id))
        return True
    except KeyError:
        return False


def test_an_upload_outlives_the_queued_job_that_reads_it(tmp_path, monkeypatch):
    clock = [time.time()]
    monkeypatch.setattr(time, "time", lambda: clock[0])  # the service's wall clock, moved by the test
    store, storage = memory_store(job_ttl_s=TTL), LocalStorage(tmp_path, "k")
    upload = zip_upload(store, storage, "t")
    clock[0] += TTL - 1  # accepted a second before the upload's own expiry...
    job = training(store, "t", upload)
    clock[0] += TTL - 1  # ...and started long after it (a busy queue)
    lifecycle.sweep_expired(store, storage)
    assert exists(storage, "t", upload)
    assert lifecycle.claim(store, job.id, "w", 15.0) is not None
    clock[0] += TTL - 1  # a long run: still a TTL from its start
    lifecycle.sweep_expired(store, storage)
    assert exists(storage, "t", upload)
    clock[0] += 2  # then retention takes it
    lifecycle.sweep_expired(store, storage)
    assert not exists(storage, "t", upload)


def test_an_input_deleted_all_the_same_fails_input_expired(tmp_path):
    from core.runner import Engines

    store, storage = memory_store(job_ttl_s=TTL), LocalStorage(tmp_path, "k")
    upload = zip_upload(store, storage, "t")
    job = training(store, "t", upload)
    storage.delete(upload_key("t", upload))  # gone by any other way (a bucket lifecycle rule, an operator)
    engines = Engines(ModelRegistry([REPO / "models"]), device="cpu", torch_threads=1, cache_dir=tmp_path / "cache")
    done = execute_job(job.id, store, storage, lambda: engines, "w")
    assert done.status == JobStatus.failed and done.error.code == "input_expired", done.error
    assert upload in done.error.message and str(tmp_path) not in done.error.message
