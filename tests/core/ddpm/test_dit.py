"""The DiT backbone: adaLN-Zero starts as zero output, patchify/unpatchify round the shape, it trains on digits
with the engine's own loop and serves through the same model folder and samplers as the U-Net."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core.ddpm.dit import DiT, DiTConfig, sincos_2d
from core.ddpm.pipeline import DDPMEngineModel
from tests.conftest import REPO


def test_shapes_and_adaln_zero_start():
    torch.manual_seed(0)
    net = DiT(DiTConfig(sample_size=16, patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10))
    x = torch.randn(3, 1, 16, 16)
    out = net(x, torch.tensor([10, 500, 999]), torch.tensor([1, 2, 10]))
    assert out.shape == x.shape and out.abs().max() == 0  # the zero-initialised output layer: a clean start
    # after one optimiser step the output depends on the class (conditioning flows through adaLN)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(3):  # the zero layers open one after the other: output, then the gates
        opt.zero_grad()
        out = net(x, torch.tensor([10, 500, 999]), torch.tensor([1, 2, 10]))
        (out - torch.randn_like(out)).pow(2).mean().backward()
        opt.step()
    with torch.no_grad():
        a = net(x[:1], torch.tensor([500]), torch.tensor([3]))
        b = net(x[:1], torch.tensor([500]), torch.tensor([7]))
    assert (a - b).abs().max() > 0


def test_position_embedding_tells_patches_apart():
    pos = sincos_2d(32, 8)
    assert pos.shape == (64, 32) and torch.cdist(pos, pos).fill_diagonal_(1).min() > 0.1


def test_config_is_checked():
    with pytest.raises(ValueError, match="patch_size"):
        DiTConfig(sample_size=16, patch_size=3)
    with pytest.raises(ValueError, match="hidden_size"):
        DiTConfig(hidden_size=30, num_heads=4)


def test_trains_on_digits_saves_and_serves(tmp_path):
    """The engine's CLI with --backbone dit: the loss falls, the folder loads, and samples come out per seed."""
    run = subprocess.run(
        [sys.executable, "-m", "core.ddpm", "train", "--dataset", "digits", "--out", str(tmp_path / "dit"),
         "--backbone", "dit", "--hidden-size", "32", "--depth", "2", "--num-heads", "4", "--patch-size", "4",
         "--max-steps", "60", "--batch-size", "32", "--learning-rate", "2e-3", "--warmup-steps", "10",
         "--threads", "1", "--seed", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    model = DDPMEngineModel.from_pretrained(tmp_path / "dit")
    assert isinstance(model.unet, DiT) and model.labels == [str(i) for i in range(10)]
    a = model.generate(labels=["3"], num_inference_steps=5, sampler="dpmpp_2m", seed=1)
    b = model.generate(labels=["3"], num_inference_steps=5, sampler="dpmpp_2m", seed=1)
    c = model.generate(labels=["3"], num_inference_steps=5, sampler="dpmpp_2m", seed=2)
    assert a.shape == (1, 1, 16, 16) and torch.equal(a, b) and (a - c).abs().max() > 0
    import json

    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["loss"] < 1.0  # below the loss of predicting zero noise (1.0) after 60 steps
