"""MNIST from its IDX files: a small IDX set built here (the full set is not needed; ``../shared`` is used only
when present), gzipped or not, in the plain or the torchvision layout."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from core.ddpm.data import load_dataset, load_mnist, read_idx

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mnist"


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open(path.with_name(path.name + ".gz"), "wb").write(data) if gz else path.write_bytes(data))


@pytest.fixture
def tiny_mnist(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12) % 10
    return images, labels


@pytest.mark.parametrize("gz, layout", [(False, ""), (True, ""), (True, "MNIST/raw")])
def test_reads_idx_files_plain_or_gzipped_in_either_layout(tmp_path, tiny_mnist, gz, layout):
    images, labels = tiny_mnist
    folder = tmp_path / layout
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", images, gz)
    write_idx(folder / "train-labels-idx1-ubyte", labels, gz)
    x, y, names = load_mnist(tmp_path, resolution=28)
    assert x.shape == (12, 1, 28, 28) and names == [str(i) for i in range(10)]
    assert y.tolist() == labels.tolist()
    np.testing.assert_allclose(((x[3, 0].numpy() + 1) * 127.5).round(), images[3])  # the pixels, in [-1, 1]
    padded, _, _ = load_dataset("mnist", 32, 1, tmp_path)
    assert padded.shape == (12, 1, 32, 32) and padded[:, :, :2].eq(-1).all()  # 2 px of background each side
    assert np.allclose(padded[3, 0, 2:30, 2:30].numpy(), x[3, 0].numpy())


def test_a_bad_file_is_refused(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(ValueError, match="not found"):
        load_mnist(tmp_path / "nowhere")


@pytest.mark.skipif(not SHARED.is_dir(), reason="the full MNIST is only on the project's machines (../shared)")
def test_the_full_set_when_present():
    x, y, _ = load_mnist(SHARED, 28)
    assert x.shape == (60000, 1, 28, 28) and np.bincount(y.numpy()).min() > 5000
    assert x.min() == -1 and x.max() == 1
