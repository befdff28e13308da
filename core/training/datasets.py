"""Uploaded training data: safe extraction of a zip, and image/caption pairs in the diffusers layouts."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from core.catalog import (
    DATASET_FORMATS,
    DATASET_MAX_ASPECT,
    DATASET_MAX_DECODED_BYTES,
    DATASET_MAX_FILES,
    DATASET_MAX_IMAGE_PIXELS,
    DATASET_MAX_UNCOMPRESSED,
)
from core.errors import InvalidDataset, JobError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
# files that look like images but are not in the allow-list are refused by name, not silently skipped
SUSPECT_SUFFIXES = {".bmp", ".gif", ".tif", ".tiff", ".eps", ".ps", ".pdf", ".svg", ".ico", ".psd", ".tga", ".pcx"}
MAX_FILES = DATASET_MAX_FILES
MAX_UNCOMPRESSED = DATASET_MAX_UNCOMPRESSED


def check_images(root: Path, paths: list[Path], resolution: int, channels: int = 3) -> None:
    """Check every image of a dataset from its header, before anything is decoded: an allowed format, at most
    ``DATASET_MAX_IMAGE_PIXELS``, an aspect ratio of at most ``DATASET_MAX_ASPECT``, and all of them together at most
    ``DATASET_MAX_DECODED_BYTES`` once decoded to float32 at ``resolution``. Raises InvalidDataset naming the file."""
    from PIL import Image, UnidentifiedImageError

    suspects = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUSPECT_SUFFIXES and p.is_file())
    if suspects:
        raise InvalidDataset(f"{suspects[0].relative_to(root)}: only PNG, JPEG and WebP images are accepted")
    per_image = channels * resolution * resolution * 4
    if len(paths) * per_image > DATASET_MAX_DECODED_BYTES:
        raise InvalidDataset(
            f"{len(paths)} images at resolution {resolution} decode to "
            f"{len(paths) * per_image / 2**30:.1f} GiB, over the cap of "
            f"{DATASET_MAX_DECODED_BYTES / 2**30:.0f} GiB; use fewer images or a lower resolution"
        )
    for path in paths:
        name = path.relative_to(root)
        try:
            with Image.open(path, formats=list(DATASET_FORMATS)) as im:  # the header only
                w, h = im.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise InvalidDataset(f"{name}: not a PNG, JPEG or WebP image") from None
        if w < 1 or h < 1 or w * h > DATASET_MAX_IMAGE_PIXELS:
            raise InvalidDataset(f"{name}: {w}x{h} is over the limit of {DATASET_MAX_IMAGE_PIXELS:,} pixels")
        if max(w, h) / min(w, h) > DATASET_MAX_ASPECT:
            raise InvalidDataset(f"{name}: {w}x{h} has an aspect ratio over {DATASET_MAX_ASPECT:g}:1")


def extract_zip(data: bytes, dest: Path) -> Path:
    """Extract with limits: no absolute or ``..`` paths, no links, bounded file count and total size (zip bombs)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise JobError("invalid_dataset", f"the dataset is not a zip archive ({e})") from e
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if len(infos) > MAX_FILES:
        raise JobError("invalid_dataset", f"the dataset has more than {MAX_FILES} files")
    if sum(i.file_size for i in infos) > MAX_UNCOMPRESSED:
        raise JobError("invalid_dataset", f"the dataset unpacks to more than {MAX_UNCOMPRESSED} bytes")
    root = dest.resolve()
    for info in infos:
        name = info.filename
        if (
            name.startswith(("/", "\\"))
            or ".." in Path(name).parts
            or (info.external_attr >> 16) & 0o170000 == 0o120000
        ):
            raise JobError("invalid_dataset", f"unsafe path in the dataset: {name!r}")
        if name.startswith("__MACOSX/") or Path(name).name.startswith("."):
            continue
        target = (root / name).resolve()
        if root not in target.parents:
            raise JobError("invalid_dataset", f"unsafe path in the dataset: {name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src:
            target.write_bytes(src.read(info.file_size + 1)[: info.file_size])
    return root


def captioned_images(root: Path) -> list[tuple[Path, str]]:
    """(image, caption) pairs from ``metadata.jsonl`` lines of ``{"file_name", "text"}``, or ``x.txt`` beside
    ``x.png``."""
    meta = next(iter(sorted(root.rglob("metadata.jsonl"))), None)
    pairs: list[tuple[Path, str]] = []
    if meta is not None:
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                path = (meta.parent / row["file_name"]).resolve()
                text = str(row.get("text", ""))
            except (ValueError, KeyError, TypeError) as e:
                raise JobError("invalid_dataset", f"metadata.jsonl line {n}: {e}") from e
            if root not in path.parents or not path.is_file():
                raise JobError("invalid_dataset", f"metadata.jsonl line {n}: no image {row.get('file_name')!r}")
            pairs.append((path, text))
    else:
        for img in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            cap = img.with_suffix(".txt")
            pairs.append((img, cap.read_text().strip() if cap.is_file() else ""))
    if not pairs:
        raise JobError("invalid_dataset", "the dataset holds no images")
    return pairs
