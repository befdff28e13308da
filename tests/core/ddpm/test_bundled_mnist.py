"""The bundled `mnist` engine model: what the registry serves, its defaults, and a pinned slice of a draw (the model
card's quality tables come from bench/mnist_quality.py, which needs the MNIST files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.ddpm.pipeline import DDPMEngineModel
from core.registry import ModelRegistry

MNIST = Path(__file__).resolve().parents[3] / "models" / "mnist"


@pytest.fixture(scope="module")
def model() -> DDPMEngineModel:
    return DDPMEngineModel.from_pretrained(MNIST)


def test_registry_serves_mnist_beside_digits():
    entries = {e.id: e for e in ModelRegistry([MNIST.parent]).list()}
    assert {"digits", "mnist"} <= set(entries)
    m = entries["mnist"]
    assert (m.width, m.height) == (28, 28) and m.objective == "flow" and m.labels == [str(i) for i in range(10)]
    assert m.default_scheduler == "euler" and m.default_num_inference_steps == 20
    assert sum(f.stat().st_size for f in MNIST.iterdir()) < 20 * 2**20  # under 20 MB in the repo


def test_a_draw_is_a_digit_shaped_image_and_pinned(model):
    x = model.generate(["3", "seven"], num_images=2, seed=0, guidance_scale=2.0)  # the defaults: Euler, 20 steps
    assert x.shape == (2, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    ink = (x > 0).float().mean(dim=(1, 2, 3))
    assert ((ink > 0.05) & (ink < 0.4)).all()  # strokes on a dark ground, as MNIST digits are
    assert (x[:, :, :3].mean() < -0.8) and (x[:, :, -3:].mean() < -0.8)  # the borders stay background
    assert (x[0] - x[1]).abs().mean() > 0.1  # two labels, two different digits
    got = x[0, 0, 14, 8:20:2]
    assert torch.allclose(got, EXPECTED, atol=2e-2), got


EXPECTED = torch.tensor([-0.9968, -0.9510, 0.9932, 0.9892, 0.9844, 0.9788])  # row 14 of the "3": ground, stroke
