"""The LoRA training job on the tiny Stable Diffusion pipeline, called as the runner calls it: it learns, and the
adapter it registers loads in plain diffusers and changes the image."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import torch

from core.schemas import LoraTrainingRequest
from core.training import lora_job
from tests.core.training.test_ddpm_job import TrainCtx

UPLOAD = "upl_" + "1" * 32


def dataset() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        lines = []
        for i in range(4):
            img = io.BytesIO()
            pixels = np.full((32, 32, 3), (200, 40, 40), np.uint8) + rng.integers(0, 20, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(img, format="PNG")
            zf.writestr(f"img{i}.png", img.getvalue())
            lines.append(json.dumps({"file_name": f"img{i}.png", "text": "a red style photo"}))
        zf.writestr("metadata.jsonl", "\n".join(lines))
    return buf.getvalue()


def test_it_learns_and_registers_an_adapter_diffusers_loads(engines, tmp_path):
    import diffusers

    entry = engines.registry.get("tiny-sd")
    ctx = TrainCtx(tmp_path, uploads={UPLOAD: dataset()})
    req = LoraTrainingRequest(base_model="tiny-sd", name="red", dataset=UPLOAD, rank=4, learning_rate=1e-2,
                              max_train_steps=30, train_batch_size=2, resolution=32, seed=0)  # fmt: skip
    lora_job.run(req, entry, ctx, engines.warm)
    assert ctx.steps[-1] == (30, 30)
    assert np.mean(ctx.losses[-10:]) < np.mean(ctx.losses[:5])  # it learned
    kind, name, folder = ctx.registered_as
    assert (kind, name) == ("lora", "red") and (folder / lora_job.LORA_FILE).is_file()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(entry.source)
    pipe.set_progress_bar_config(disable=True)

    def draw() -> np.ndarray:
        g = torch.Generator().manual_seed(3)
        return pipe(
            "a red style photo", num_inference_steps=2, height=32, width=32, generator=g, output_type="np"
        ).images

    plain = draw()
    pipe.load_lora_weights(str(folder / lora_job.LORA_FILE))
    assert np.abs(draw() - plain).max() > 1e-3  # the adapter changes what the base model draws
