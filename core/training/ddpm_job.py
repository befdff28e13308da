"""A training job of the from-scratch engine: train, register the result as a model of the tenant's.

Checkpoints the full training state to storage every ``checkpoint_every`` steps, so a job whose worker dies
resumes from its last checkpoint on the next worker and still ends ``succeeded``.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import torch

from core import tenant_models
from core.ddpm.data import load_digits_dataset, load_image_folder
from core.ddpm.pipeline import DDPMEngineModel, make_grid
from core.ddpm.process import make_objective
from core.ddpm.training import TrainConfig, train
from core.ddpm.unet import UNet, UNetConfig, count_parameters
from core.errors import JobError
from core.jobs.execute import Artifact, RunContext, RunResult
from core.schemas import JobRecord, ModelRef
from core.storage import upload_key
from core.training.datasets import IMAGE_SUFFIXES, check_images, extract_zip


def state_key(job_id: str) -> str:
    return f"jobs/{job_id}/train_state.pt"


def unet_config_for(resolution: int, channels: int, num_classes: int | None) -> UNetConfig:
    mult = (1, 2, 2) if resolution % 4 == 0 else (1, 2) if resolution % 2 == 0 else (1,)
    return UNetConfig(
        sample_size=resolution,
        in_channels=channels,
        base_channels=32,
        channel_mult=mult,
        num_res_blocks=1,
        attention_resolutions=(resolution // 2,),
        num_classes=num_classes,
    )


def load_data(job: JobRecord, ctx: RunContext, resolution: int, workdir: Path):
    dataset = job.input["dataset"]
    if dataset == "digits":
        return load_digits_dataset(resolution)
    try:
        raw = ctx.storage.get(upload_key(job.tenant, dataset))
    except KeyError:
        raise JobError("invalid_dataset", f"upload {dataset!r} is gone") from None
    root = extract_zip(raw, workdir / "data")
    files = sorted(
        f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.name.startswith(".")
    )
    check_images(root, files, resolution, 3)  # before any pixel is decoded
    try:
        return load_image_folder(root, resolution, channels=3)
    except ValueError as e:
        raise JobError("invalid_dataset", str(e)) from e


def run_ddpm_training(job: JobRecord, ctx: RunContext, device: str, checkpoint_every: int | None = None) -> RunResult:
    p = job.input
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # 1. data
        images, labels, names = load_data(job, ctx, p["resolution"], work)
        # 2. model and objective
        sched = (
            {"kind": "flow"}
            if p["objective"] == "flow"
            else {
                "kind": "ddpm",
                "num_train_timesteps": 1000,
                "beta_schedule": p["beta_schedule"],
                "prediction_type": p["prediction_type"],
            }
        )
        torch.manual_seed(p["seed"])
        unet = UNet(unet_config_for(p["resolution"], images.shape[1], len(names) if names else None))
        every = checkpoint_every or max(10, p["max_train_steps"] // 10)
        cfg = TrainConfig(
            max_steps=p["max_train_steps"],
            batch_size=p["train_batch_size"],
            learning_rate=p["learning_rate"],
            warmup_steps=min(100, p["max_train_steps"] // 10),
            seed=p["seed"],
            checkpoint_every=every,
        )
        # 3. resume from the last checkpoint a previous attempt left in storage
        state = work / "train_state.pt"
        try:
            state.write_bytes(ctx.storage.get(state_key(job.id)))
        except KeyError:
            pass
        losses: list[float] = []

        def on_step(prog) -> None:
            losses.append(prog.loss)
            ctx.progress(prog.step, prog.max_steps, loss=round(prog.loss, 5), images_per_s=round(prog.images_per_s, 1))
            if prog.step % every == 0 and prog.step < prog.max_steps and state.exists():
                ctx.checkpoint(state_key(job.id), state.read_bytes())

        # 4. train (checkpointing into `state`, uploaded after each save)
        t0 = time.perf_counter()
        ema = train(unet, make_objective(sched), images, labels, cfg, callback=on_step, state_path=state, device=device)
        train_ms = (time.perf_counter() - t0) * 1000
        # 5. save, register under the tenant, and draw a grid to show
        model = DDPMEngineModel(
            ema.model.cpu(),
            sched,
            names,
            default_guidance_scale=2.0 if names else 1.0,
            metadata={
                "job_id": job.id,
                "dataset": p["dataset"],
                "train": p,
                "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
            },
        )
        folder = work / "model"
        model.save_pretrained(folder)
        record = tenant_models.publish(
            ctx.store, ctx.storage, job.tenant, "model", p["name"], folder, job.id, tenant_models.read_configs(folder)
        )
        grid_labels = [names[i % len(names)] for i in range(min(16, 2 * len(names)))] if names else None
        grid = make_grid(
            model.generate(
                grid_labels, num_images=len(grid_labels) if grid_labels else 8, num_inference_steps=25, seed=p["seed"]
            ),
            nrow=8,
        )
        buf = io.BytesIO()
        grid.save(buf, format="PNG")
    card = {
        "name": p["name"],
        "version": record["version"],
        "parameters": count_parameters(unet),
        "dataset": p["dataset"],
        "images": int(images.shape[0]),
        "labels": names,
        "steps": p["max_train_steps"],
        "final_loss": model.metadata["final_loss"],
        "train_seconds": round(train_ms / 1000, 2),
    }
    return RunResult(
        [
            Artifact(
                buf.getvalue(), "image/png", "png", {"width": grid.width, "height": grid.height, "role": "samples"}
            ),
            Artifact(json.dumps(card, indent=2).encode(), "application/json", "json", {"role": "model_card"}),
        ],
        inference_ms=train_ms,
        model=ModelRef(id=p["name"], sha256=record["version"]),
    )
