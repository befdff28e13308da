"""Warm vs cold on the tiny pipelines: load time, first and second request latency per task type.

    python bench/pipelines.py [--models DIR] [--repeats 5]

Builds the tiny pipelines (tests/fixtures/tiny.py) unless --models names a folder of them, then for each task
runs one job on a cold worker (the pipeline is loaded with from_pretrained inside the job) and --repeats jobs on
the now-warm worker, through the same job code the service runs (claim, run, store outputs, finish).
Latency is the job's run time (started_at -> finished_at); the table prints the warm median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.jobs import lifecycle  # noqa: E402
from core.jobs.execute import execute_job  # noqa: E402
from core.jobs.store import memory_store  # noqa: E402
from core.registry import ModelRegistry  # noqa: E402
from core.runner import Engines  # noqa: E402
from core.schemas import JobStatus, JobType  # noqa: E402
from core.storage import LocalStorage  # noqa: E402


def _image_upload(store, storage, w: int, h: int, mask: bool = False) -> str:
    """An upload of the bench tenant's (jobs carry upload ids; the gateway turns inline images into uploads)."""
    import io

    import numpy as np
    from PIL import Image

    from core import uploads

    rng = np.random.default_rng(0)
    a = np.zeros((h, w), np.uint8) if mask else rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    if mask:
        a[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    data = buf.getvalue()
    return uploads.save(store.retention, storage, "bench", data, uploads.describe(data, "image", 10**7), 3600)["id"]


def cases(store, storage) -> list[tuple[str, JobType, dict]]:
    base = {
        "prompt": "a photo of a cat",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "num_inference_steps": 4,
        "guidance_scale": 5.0,
        "scheduler": "default",
        "seed": 1,
        "num_images": 1,
        "loras": [],
        "timeout_s": 900,  # every field admission fills: the worker refuses a request without them
    }
    img, msk = _image_upload(store, storage, 64, 64), _image_upload(store, storage, 64, 64, mask=True)
    video = {k: v for k, v in base.items() if k not in ("num_images", "loras")}
    return [
        ("tiny-sd", JobType.txt2img, base),
        ("tiny-sd", JobType.img2img, {**base, "image": img, "strength": 0.75}),
        ("tiny-sd", JobType.inpaint, {**base, "image": img, "mask_image": msk, "strength": 1.0}),
        (
            "tiny-sd",
            JobType.controlnet,
            {
                **base,
                "controlnet": "tiny-controlnet",
                "control_image": img,
                "preprocess": "canny",
                "controlnet_conditioning_scale": 1.0,
                "canny_low_threshold": 100,
                "canny_high_threshold": 200,
            },
        ),
        ("tiny-sd-inpaint", JobType.inpaint, {**base, "image": img, "mask_image": msk, "strength": 1.0}),
        ("tiny-sdxl", JobType.txt2img, base),
        ("tiny-wan", JobType.video, {**video, "width": 32, "height": 32, "num_frames": 5, "fps": 8}),
    ]


def run_once(runner: Engines, store, storage, model: str, task: JobType, params: dict):
    job = lifecycle.new_job(task, {**params, "model": model}, "bench")
    store.jobs.create(job)
    done = execute_job(job.id, store, storage, lambda: runner, "bench")
    assert done.status == JobStatus.succeeded, done.error
    return (done.finished_at - done.started_at).total_seconds() * 1000, done.metrics.load_ms


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(a.models) if a.models else Path(tmp) / "models"
        if not a.models:
            from tests.fixtures.tiny import build_tiny_models

            build_tiny_models(models)
        registry = ModelRegistry([models])
        store, storage = memory_store(), LocalStorage(Path(tmp) / "files", "bench")
        rows = []
        for model, task, params in cases(store, storage):
            cold = Engines(registry, device=None)  # a fresh worker: nothing loaded
            first_ms, load_ms = run_once(cold, store, storage, model, task, params)
            warm = [run_once(cold, store, storage, model, task, params) for _ in range(a.repeats)]
            second_ms = statistics.median(w[0] for w in warm)
            rows.append((model, task.value, load_ms, first_ms, second_ms, max(w[1] for w in warm)))
    print(
        f"\nWarm vs cold, tiny pipelines, device {Engines(ModelRegistry([])).warm.device} (warm: median of {a.repeats})"
    )
    print("| model           | task       | load ms | first request ms | warm request ms | warm load_ms |")
    print("|-----------------|------------|---------|------------------|-----------------|--------------|")
    for m, t, load, first, second, wl in rows:
        print(f"| {m:<15} | {t:<10} | {load:>7.0f} | {first:>16.0f} | {second:>15.0f} | {wl:>12.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
