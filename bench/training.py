"""Training throughput: LoRA training (steps/s, peak memory) and the engine's DDPM training as a job versus
the engine's own command line (the job wrapper's cost: progress events, checkpoints to storage).

    python bench/training.py [--lora-steps 30] [--ddpm-steps 100]
    python bench/training.py --precision      # the engine's step time in fp32 and in bf16 autocast, MNIST-sized

The LoRA rows train on the tiny Stable Diffusion pipeline (tests/fixtures/tiny.py) at 64x64 on 8 images.
Peak memory is the peak RSS of this process sampled every 10 ms (torch.cuda.max_memory_allocated on CUDA).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from core.jobs import lifecycle  # noqa: E402
from core.jobs.execute import execute_job  # noqa: E402
from core.jobs.store import memory_store  # noqa: E402
from core.registry import ModelRegistry  # noqa: E402
from core.runner import Engines  # noqa: E402
from core.schemas import JobStatus, JobType  # noqa: E402
from core.storage import LocalStorage  # noqa: E402


class PeakRSS:
    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def _loop(self):
        p = psutil.Process()
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, p.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def run_job(runner, store, storage, job_type, params, tenant="bench"):
    job = lifecycle.new_job(job_type, params, tenant)
    store.jobs.create(job)
    done = execute_job(job.id, store, storage, lambda: runner, "bench")
    assert done.status == JobStatus.succeeded, done.error
    card = next(o for o in done.output if o.model_dump().get("role", "").endswith("card"))
    return json.loads(storage.get(card.key))


def precision(steps: int = 8, batch: int = 128) -> None:
    """The bundled mnist model's U-Net (28x28, base 32, mult 1-2-2, attention at 7x7) trained on random digits-shaped
    data for ``steps`` steps with and without bf16 autocast (``TrainConfig.bf16``); the median step time of all but
    the first two steps."""
    import statistics

    import torch

    from core.ddpm.process import make_objective
    from core.ddpm.training import TrainConfig, train
    from core.ddpm.unet import UNet, UNetConfig

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand((1024, 1, 28, 28), generator=g) * 2 - 1, torch.randint(0, 10, (1024,), generator=g)
    rows = []
    for bf16 in (False, True):
        torch.manual_seed(0)
        net = UNet(UNetConfig(sample_size=28, channel_mult=(1, 2, 2), attention_resolutions=(7,), num_classes=10))
        times: list[float] = []
        train(
            net,
            make_objective({"kind": "flow"}),
            x,
            y,
            TrainConfig(max_steps=steps, batch_size=batch, warmup_steps=1, bf16=bf16),
            callback=lambda p, times=times: times.append(batch / p.images_per_s),
        )
        rows.append(("bf16 autocast" if bf16 else "fp32", statistics.median(times[2:])))
    print(f"\nEngine training step, MNIST-sized U-Net, batch {batch}, {torch.get_num_threads()} threads")
    print("| precision | s / step | speed-up |")
    print("|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {rows[0][1] / t:.2f}x |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lora-steps", type=int, default=30)
    p.add_argument("--ddpm-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", action="store_true", help="only the fp32 vs bf16 engine training table")
    a = p.parse_args()
    if a.precision:
        precision()
        return 0
    from tests.api.test_lora import dataset_zip
    from tests.fixtures.tiny import build_tiny_models

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_tiny_models(tmp / "models", ("tiny-sd",))
        runner = Engines(ModelRegistry([tmp / "models"]))
        store, storage = memory_store(), LocalStorage(tmp / "files", "bench")
        storage.put("uploads/bench/upl_" + "a" * 32, dataset_zip(), "application/zip")
        for rank in (4, 16):
            params = {
                "base_model": "tiny-sd",
                "name": f"r{rank}",
                "dataset": "upl_" + "a" * 32,
                "rank": rank,
                "alpha": None,
                "learning_rate": 1e-3,
                "max_train_steps": a.lora_steps,
                "train_batch_size": 2,
                "resolution": 64,
                "seed": 0,
                "train_text_encoder": False,
                "timeout_s": 3600,
            }
            with PeakRSS() as peak:
                card = run_job(runner, store, storage, JobType.lora_training, params)
            rows.append(
                (
                    f"LoRA rank {rank}, tiny-sd 64x64, batch 2",
                    a.lora_steps / card["train_seconds"],
                    f"{peak.peak / 2**20:.0f} MiB RSS",
                )
            )

        ddpm = {
            "name": "bench-digits",
            "dataset": "digits",
            "resolution": 16,
            "objective": "ddpm",
            "beta_schedule": "linear",
            "prediction_type": "epsilon",
            "max_train_steps": a.ddpm_steps,
            "train_batch_size": a.batch_size,
            "learning_rate": 1e-3,
            "seed": 0,
            "timeout_s": 3600,
        }
        job_card = run_job(runner, store, storage, JobType.ddpm_training, ddpm)
        job_sps = a.ddpm_steps / job_card["train_seconds"]
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "core.ddpm",
                "train",
                "--dataset",
                "digits",
                "--out",
                str(tmp / "cli"),
                "--max-steps",
                str(a.ddpm_steps),
                "--batch-size",
                str(a.batch_size),
                "--seed",
                "0",
                "--checkpoint-every",
                "0",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        cli_sps = a.ddpm_steps / json.loads(cli.stdout.strip().splitlines()[-1])["seconds"]
        rows.append((f"DDPM engine, digits 16x16, batch {a.batch_size}: command line", cli_sps, ""))
        rows.append(
            (
                f"DDPM engine, digits 16x16, batch {a.batch_size}: as a job",
                job_sps,
                f"job wrapper cost {100 * (1 - job_sps / cli_sps):+.1f}%",
            )
        )
    print(f"\nTraining throughput, device {runner.warm.device}")
    print("| what | steps / s | note |")
    print("|---|---|---|")
    for what, sps, note in rows:
        print(f"| {what} | {sps:.2f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
