"""Fixtures of the pipeline tests: LoRA files as a user would drop them into MODELS_DIR/loras."""

import pytest


@pytest.fixture(scope="session")
def dropped_loras(tiny_models_dir, tmp_path_factory):
    """Two LoRA files as a user would drop them into MODELS_DIR/loras (random, non-zero adapters)."""
    import diffusers
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    root = tmp_path_factory.mktemp("lora-root")
    (root / "loras").mkdir()
    for i, name in enumerate(("ink", "neon")):
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_models_dir / "tiny-sd")
        torch.manual_seed(i)
        pipe.unet.add_adapter(
            LoraConfig(
                r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]
            )
        )
        for n, p in pipe.unet.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
        diffusers.StableDiffusionPipeline.save_lora_weights(root / "tmp", unet_lora_layers=layers)
        (root / "tmp" / "pytorch_lora_weights.safetensors").rename(root / "loras" / f"{name}.safetensors")
    return root
