"""A LoRA trained on a single-file checkpoint (A1111's or ComfyUI's folders) starts from that file's weights."""

from __future__ import annotations

import pytest

from core.registry import ModelRegistry
from core.schemas import LoraTrainingRequest
from tests.fixtures.single_file import build_user_folders


@pytest.mark.parametrize("layout", ["a1111"])
def test_the_trainee_of_a_single_file_base_holds_its_weights(tiny_models_dir, tmp_path, layout):
    import diffusers
    import torch

    from core.training.lora_job import frozen_base_with_adapters

    build_user_folders(tiny_models_dir, tmp_path, layout)
    entry = ModelRegistry([tmp_path]).get("sd15-tiny")
    assert entry.single_file is not None
    request = LoraTrainingRequest(base_model="sd15-tiny", name="mine", dataset="upl_" + "0" * 32, rank=2, seed=0)
    trainee = frozen_base_with_adapters(entry, request, "cpu")
    twin = diffusers.StableDiffusionPipeline.from_pretrained(tiny_models_dir / "tiny-sd")
    base = {k.replace(".base_layer", ""): v for k, v in trainee.unet.state_dict().items() if "lora_" not in k}
    expected = twin.unet.state_dict()
    assert base.keys() == expected.keys()
    assert all(torch.equal(base[k], expected[k]) for k in expected)  # the file's weights, converted exactly
    assert any(p.requires_grad for n, p in trainee.unet.named_parameters() if "lora_" in n)  # fresh adapters
