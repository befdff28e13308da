"""What step previews cost: the step time of a job with and without ``preview_every=1`` (a preview at every step,
the most a request can ask), through the job code the service runs (claim, run, events, outputs, finish).

    python bench/previews.py [--jobs 8]

Models: the bundled ``digits`` engine (previews: the predicted x0 as a PNG) and the tiny SD pipeline (previews:
the latents projected to RGB, no VAE decode). The tiny models make a step cost milliseconds, the hardest case for
a fixed per-preview cost; on a real model (a step of 50-500 ms) the same cost is a far smaller share.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.jobs import lifecycle  # noqa: E402
from core.jobs.execute import execute_job  # noqa: E402
from core.jobs.store import memory_store  # noqa: E402
from core.registry import ModelRegistry  # noqa: E402
from core.runner import Engines  # noqa: E402
from core.schemas import JobType  # noqa: E402
from core.storage import LocalStorage  # noqa: E402


class NoQueue:
    def enqueue(self, job_id, queue):
        pass


def one_job(engines, store, storage, data: dict, steps: int, seed: int) -> float:
    job, _ = lifecycle.submit(store, NoQueue(), lifecycle.new_job(JobType.txt2img, {**data, "seed": seed}, "b"))
    done = execute_job(job.id, store, storage, lambda: engines, "w")
    assert done.status.value == "succeeded", done.error
    return done.metrics.inference_ms / steps


def step_ms(engines, store, storage, data: dict, steps: int, jobs: int) -> tuple[float, float]:
    """(step ms without previews, with a preview every step): jobs alternate, so drift hits both alike."""
    one_job(engines, store, storage, data, steps, 0)  # warm-up
    plain, shown = [], []
    for i in range(jobs):
        plain.append(one_job(engines, store, storage, {**data, "preview_every": 0}, steps, i))
        shown.append(one_job(engines, store, storage, {**data, "preview_every": 1}, steps, i))
    return statistics.median(plain), statistics.median(shown)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=10)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        from tests.fixtures.tiny import build_tiny_models

        build_tiny_models(Path(d) / "models", ("tiny-sd",))
        engines = Engines(ModelRegistry([REPO / "models", Path(d) / "models"]), device="cpu")
        store, storage = memory_store(), LocalStorage(Path(d) / "files", "k")
        base = {"negative_prompt": "", "num_images": 1, "loras": [], "timeout_s": 600}
        cases = [
            ("digits 16², ddim", {**base, "model": "digits", "prompt": "7", "width": 16, "height": 16,
                                  "num_inference_steps": 50, "guidance_scale": 2.0, "scheduler": "ddim"}, 50),
            ("tiny-sd 64², euler", {**base, "model": "tiny-sd", "prompt": "a cat", "width": 64, "height": 64,
                                    "num_inference_steps": 20, "guidance_scale": 5.0, "scheduler": "euler"}, 20),
        ]  # fmt: skip
        print(f"\nStep time with and without previews at every step, median of {a.jobs} jobs")
        print("| model | steps | step ms, no previews | step ms, preview_every=1 | cost per step |")
        print("|---|---|---|---|---|")
        for name, data, steps in cases:
            plain, shown = step_ms(engines, store, storage, data, steps, a.jobs)
            print(f"| {name} | {steps} | {plain:.2f} | {shown:.2f} | {100 * (shown - plain) / plain:+.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
