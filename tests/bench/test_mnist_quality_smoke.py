"""``bench/mnist_quality.py --smoke``: the MNIST judge trains on an IDX set and scores a model (the bundled digits
model stands in here: its 16x16 images are resized to 28x28)."""

from __future__ import annotations

import numpy as np

from bench.mnist_quality import main
from tests.conftest import REPO
from tests.core.ddpm.test_mnist_data import write_idx


def test_mnist_quality_smoke(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("t10k", 200)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28), np.uint8)
        for i, c in enumerate(labels):  # a learnable set: a bright bar whose row depends on the label
            images[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 255
            images[i] = np.clip(images[i] + rng.integers(0, 40, (28, 28)), 0, 255)
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", images, gz=True)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels, gz=False)
    assert main(["--smoke", "--data-root", str(tmp_path), "--model", str(REPO / "models" / "digits")]) == 0
    out = capsys.readouterr().out
    ceiling = float(out.split("test accuracy (ceiling) ")[1].split(";")[0])
    assert ceiling > 0.9  # the judge learns the set
    assert "| dpmpp_2m-4 |" in out and "| ddim-4 |" in out and "Guidance" in out
