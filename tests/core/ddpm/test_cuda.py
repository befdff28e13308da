"""The engine's CUDA path: bf16-autocast training and half-precision sampling (skipped without a GPU)."""

import pytest
import torch

from core.ddpm.data import load_digits_dataset
from core.ddpm.pipeline import DDPMEngineModel
from core.ddpm.process import make_objective
from core.ddpm.training import TrainConfig, train
from core.ddpm.unet import UNet, UNetConfig

pytestmark = pytest.mark.cuda


def test_bf16_training_on_cuda_lowers_loss():
    x, y, names = load_digits_dataset(16)
    torch.manual_seed(0)
    unet = UNet(UNetConfig(sample_size=16, base_channels=32, num_classes=10))
    losses = []
    train(
        unet,
        make_objective({"kind": "ddpm", "num_train_timesteps": 1000}),
        x,
        y,
        TrainConfig(max_steps=200, batch_size=128, learning_rate=1e-3, warmup_steps=20),
        callback=lambda p: losses.append(p.loss),
        device="cuda",
    )
    assert sum(losses[-20:]) / 20 < 0.7 * sum(losses[:20]) / 20


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sampling_matches_fp32(dtype, tmp_path):
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "models" / "digits"
    m32 = DDPMEngineModel.from_pretrained(path, device="cuda")
    mh = DDPMEngineModel.from_pretrained(path, device="cuda", dtype=dtype)
    a = m32.generate(["3"], num_inference_steps=20, seed=1)
    b = mh.generate(["3"], num_inference_steps=20, seed=1)
    assert (a - b).abs().mean() < 0.05
