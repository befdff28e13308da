"""Uploaded training data: safe extraction of a zip, and image/caption pairs in the diffusers layouts."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from core.errors import JobError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MAX_FILES = 10_000
MAX_UNCOMPRESSED = 2 * 1024**3


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
        if name.startswith(("/", "\\")) or ".." in Path(name).parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
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
    """(image, caption) pairs from ``metadata.jsonl`` lines of ``{"file_name", "text"}``, or ``x.txt`` beside ``x.png``."""
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
