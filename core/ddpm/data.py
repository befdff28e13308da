"""Training data: scikit-learn's handwritten digits, an image folder, or torchvision's MNIST / CIFAR-10.

Every loader returns ``(images, labels, class_names)``: images float32 in [-1, 1] of shape (N, C, R, R),
labels int64 of shape (N,) (or None), class names a list of strings (or None).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}


def load_digits_dataset(resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The 1,797 real 8x8 digits of ``sklearn.datasets.load_digits``, upsampled (bilinear) to ``resolution``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1) * 2 - 1
    return x, torch.from_numpy(d.target.astype(np.int64)), [str(i) for i in range(10)]


def to_digits_features(images: torch.Tensor) -> np.ndarray:
    """Map generated images in [-1, 1] (N, 1, R, R) to the 64-dim 0..16 space of ``load_digits`` (for classifiers)."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    x = F.interpolate(x, size=(8, 8), mode="area")
    return (x.reshape(x.shape[0], -1) * 16.0).cpu().numpy()


def load_image_folder(
    root: str | Path, resolution: int, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    """Images under ``root``; with sub-folders, each sub-folder's name is a class label."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"dataset: no images found under {root}")
    classes = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
    labelled = bool(classes) and all(p.parent != root for p in files)
    mode = "L" if channels == 1 else "RGB"
    arrays, labels = [], []
    for p in files:
        with Image.open(p) as im:
            im = im.convert(mode).resize((resolution, resolution), Image.BICUBIC)
            a = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
        arrays.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
        if labelled:
            labels.append(classes.index(p.parent.relative_to(root).parts[0]))
    x = torch.from_numpy(np.stack(arrays))
    if not labelled:
        return x, None, None
    return x, torch.tensor(labels, dtype=torch.long), classes


def load_torchvision_dataset(
    name: str, root: str | Path, resolution: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """MNIST or CIFAR-10 through torchvision (needs torchvision and a network to download; not used in tests)."""
    import torchvision  # noqa: PLC0415 - optional dependency

    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[name]
    ds = cls(root=str(root), train=True, download=True)
    data = torch.as_tensor(np.asarray(ds.data), dtype=torch.float32) / 127.5 - 1.0
    data = data[:, None] if data.ndim == 3 else data.permute(0, 3, 1, 2)
    if data.shape[-1] != resolution:
        data = F.interpolate(data, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return data, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long), [str(c) for c in ds.classes]


def load_dataset(name: str, resolution: int, channels: int = 1, root: str | Path = "data"):
    """Named factory: ``digits``, ``mnist``, ``cifar10``, or a path to an image folder."""
    if name == "digits":
        if channels != 1:
            raise ValueError("channels: the digits data set has 1 channel")
        return load_digits_dataset(resolution)
    if name in ("mnist", "cifar10"):
        return load_torchvision_dataset(name, root, resolution)
    if Path(name).is_dir():
        return load_image_folder(name, resolution, channels)
    raise ValueError(f"dataset: unknown data set {name!r}; expected 'digits', 'mnist', 'cifar10' or a folder")
