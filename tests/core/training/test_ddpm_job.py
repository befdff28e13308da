"""The engine's training job, called as the runner calls it: it learns (the loss falls), registers a model that
draws, saves checkpoints, resumes from one, and refuses a dataset it cannot read before any step."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidDataset
from core.schemas import DDPMTrainingRequest, Registration
from core.training import ddpm_job
from tests.core.executors.conftest import Ctx

CPU = SimpleNamespace(device="cpu")


class TrainCtx(Ctx):
    """Keeps what a training job hands the service: losses, checkpoints, the registered folder."""

    def __init__(self, root: Path, uploads=None, checkpoint: bytes | None = None):
        super().__init__(uploads)
        self.root, self.losses, self.saved, self.checkpoint = root, [], {}, checkpoint
        self.registered_as: tuple[str, str, Path] | None = None

    def progress(self, step, total, **extra):
        super().progress(step, total)
        self.losses.append(extra["loss"])

    def save_checkpoint(self, name, data):
        self.saved[name] = data
        return True

    def load_checkpoint(self, name):
        return self.checkpoint

    def register(self, kind, name, folder, extra=None):
        kept = self.root / f"{kind}-{name}"
        shutil.copytree(folder, kept)
        self.registered_as = (kind, name, kept)
        files = sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file())
        version, prefix = "f" * 64, f"registry/{self.tenant}/{kind}/{name}/{'f' * 16}"
        return Registration(
            name=name, kind=kind, version=version, prefix=prefix, job_id=self.job_id, files=files, **(extra or {})
        )


def request(**kw) -> DDPMTrainingRequest:
    base = dict(name="mine", dataset="digits", resolution=8, max_train_steps=60, train_batch_size=32, seed=0,
                learning_rate=2e-3)  # fmt: skip
    return DDPMTrainingRequest(**{**base, **kw})


def test_it_learns_registers_a_model_that_draws_and_checkpoints(tmp_path):
    from core.ddpm.pipeline import DDPMEngineModel

    ctx = TrainCtx(tmp_path)
    result = ddpm_job.run(request(), None, ctx, CPU, checkpoint_every=20)
    assert ctx.steps[0] == (1, 60) and ctx.steps[-1] == (60, 60)
    assert np.mean(ctx.losses[-10:]) < 0.7 * np.mean(ctx.losses[:5])  # it learned
    kind, name, folder = ctx.registered_as
    assert (kind, name) == ("model", "mine") and ddpm_job.STATE in ctx.saved  # checkpointed along the way
    model = DDPMEngineModel.from_pretrained(folder, device="cpu")
    images = model.generate(["3", "3"], num_images=2, num_inference_steps=5, seed=1)
    assert images.shape == (2, 1, 8, 8) and float(images.std()) > 0.1
    grid, card = result.artifacts
    assert grid.meta["role"] == "samples" and card.meta["role"] == "model_card"
    assert result.model.id == "mine"


def test_a_second_attempt_resumes_from_the_checkpoint(tmp_path):
    first = TrainCtx(tmp_path / "a")
    ddpm_job.run(request(max_train_steps=40), None, first, CPU, checkpoint_every=20)
    resumed = TrainCtx(tmp_path / "b", checkpoint=first.saved[ddpm_job.STATE])
    ddpm_job.run(request(max_train_steps=40), None, resumed, CPU, checkpoint_every=20)
    assert resumed.steps[0] == (21, 40)  # steps 1-20 are not trained again


def test_a_dataset_of_no_images_is_refused_before_any_step(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes.txt", "no images here")
        img = io.BytesIO()
        Image.new("RGB", (8, 8)).save(img, format="GIF")
        zf.writestr("a.gif", img.getvalue())  # not an allowed format
    ctx = TrainCtx(tmp_path, uploads={"upl_" + "0" * 32: buf.getvalue()})
    with pytest.raises(InvalidDataset):
        ddpm_job.run(request(dataset="upl_" + "0" * 32), None, ctx, CPU)
    assert ctx.steps == [] and ctx.registered_as is None
