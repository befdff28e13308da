"""The CUDA path of the pipelines: half precision, and VRAM returned on eviction (skipped without a GPU)."""

import pytest
import torch

from core.pipelines.loader import pick_dtype
from core.registry import ModelRegistry
from core.runner import Engines

pytestmark = pytest.mark.cuda


def test_half_precision_pipelines_and_eviction_frees_vram(tiny_models_dir):
    runner = Engines(
        ModelRegistry([tiny_models_dir]), device="cuda", pipeline_budget_bytes=1
    )  # every load evicts the last
    sd, _ = runner.warm.pipelines.base(runner.registry.get("tiny-sd"))
    assert sd.unet.dtype == torch.float16 and pick_dtype("cuda", "FluxPipeline") == torch.bfloat16
    image = sd("a cat", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)
    del sd
    before = torch.cuda.memory_allocated()
    runner.warm.pipelines.base(runner.registry.get("tiny-sdxl"))
    runner.warm.pipelines.base(runner.registry.get("tiny-sd"))
    assert torch.cuda.memory_allocated() <= before * 1.1 + 2**20
