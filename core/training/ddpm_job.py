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

from core.contract import Artifact, Executor, RunContext, RunResult
from core.ddpm.data import load_digits_dataset, load_image_folder
from core.ddpm.pipeline import DDPMEngineModel, make_grid
from core.ddpm.process import make_objective
from core.ddpm.training import TrainConfig, train
from core.ddpm.unet import UNet, UNetConfig, count_parameters
from core.errors import InvalidDataset
from core.pipelines.building import BUILDING
from core.schemas import DDPMTrainingRequest, ModelRef
from core.training.datasets import IMAGE_SUFFIXES, check_images, extract_zip
from core.warm import Warm

STATE = "train_state.pt"  # the checkpoint's name among the job's files


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


def new_network(resolution: int, channels: int, names: list[str] | None) -> UNet:
    """A fresh U-Net, built under the building lock (``core/pipelines/building.py``): another thread's model load
    must not leave its parameters on the meta device."""
    with BUILDING:
        return UNet(unet_config_for(resolution, channels, len(names) if names else None))


def load_data(dataset: str, ctx: RunContext, resolution: int, workdir: Path):
    if dataset == "digits":
        return load_digits_dataset(resolution)
    root = extract_zip(ctx.open_input(dataset), workdir / "data")
    files = sorted(
        f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.name.startswith(".")
    )
    check_images(root, files, resolution, 3)  # before any pixel is decoded
    try:
        return load_image_folder(root, resolution, channels=3)
    except ValueError as e:
        raise InvalidDataset(str(e)) from e


def scheduler_config(r: DDPMTrainingRequest) -> dict:
    if r.objective == "flow":
        return {"kind": "flow"}
    return {
        "kind": "ddpm",
        "num_train_timesteps": 1000,
        "beta_schedule": r.beta_schedule,
        "prediction_type": r.prediction_type,
    }


def sample_grid(model: DDPMEngineModel, names: list[str] | None, seed: int) -> Artifact:
    """A PNG grid of samples to show: each label twice (16 at most), or 8 unconditional samples."""
    labels = [names[i % len(names)] for i in range(min(16, 2 * len(names)))] if names else None
    with BUILDING:  # an engine run, as in engine_txt2img: its noise is drawn in the default dtype
        images = model.generate(labels, num_images=len(labels) if labels else 8, num_inference_steps=25, seed=seed)
    grid = make_grid(images, nrow=8)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return Artifact(buf.getvalue(), "image/png", "png", {"width": grid.width, "height": grid.height, "role": "samples"})


def run(
    request: DDPMTrainingRequest, model: None, ctx: RunContext, warm: Warm, checkpoint_every: int | None = None
) -> RunResult:
    r = request
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # 1. data, checked before any step
        images, labels, names = load_data(r.dataset, ctx, r.resolution, work)
        # 2. model and objective
        sched = scheduler_config(r)
        torch.manual_seed(r.seed)
        unet = new_network(r.resolution, images.shape[1], names)
        every = checkpoint_every or max(10, r.max_train_steps // 10)
        cfg = TrainConfig(
            max_steps=r.max_train_steps,
            batch_size=r.train_batch_size,
            learning_rate=r.learning_rate,
            warmup_steps=min(100, r.max_train_steps // 10),
            seed=r.seed,
            checkpoint_every=every,
        )
        # 3. resume from the last checkpoint an earlier attempt saved
        state = work / STATE
        saved = ctx.load_checkpoint(STATE)
        if saved is not None:
            state.write_bytes(saved)
        losses: list[float] = []

        def on_step(prog) -> None:
            losses.append(prog.loss)
            ctx.progress(prog.step, prog.max_steps, loss=round(prog.loss, 5), images_per_s=round(prog.images_per_s, 1))
            if prog.step % every == 0 and prog.step < prog.max_steps and state.exists():
                ctx.save_checkpoint(STATE, state.read_bytes())

        # 4. train (checkpointing into `state`, saved for a later attempt after each save)
        t0 = time.perf_counter()
        ema = train(
            unet, make_objective(sched), images, labels, cfg, callback=on_step, state_path=state, device=warm.device
        )
        train_ms = (time.perf_counter() - t0) * 1000
        # 5. save, register under the tenant, and draw a grid to show
        final_loss = sum(losses[-20:]) / max(1, len(losses[-20:]))
        metadata = {
            "job_id": ctx.job_id,
            "dataset": r.dataset,
            "train": r.model_dump(mode="json"),
            "final_loss": final_loss,
        }
        engine = DDPMEngineModel(
            ema.model.cpu(), sched, names, default_guidance_scale=2.0 if names else 1.0, metadata=metadata
        )
        folder = work / "model"
        engine.save_pretrained(folder)
        record = ctx.register("model", r.name, folder)  # the record holds the model's configs
        grid = sample_grid(engine, names, r.seed)
    card = {
        "name": r.name,
        "version": record.version,
        "parameters": count_parameters(unet),
        "dataset": r.dataset,
        "images": int(images.shape[0]),
        "labels": names,
        "steps": r.max_train_steps,
        "final_loss": final_loss,
        "train_seconds": round(train_ms / 1000, 2),
    }
    return RunResult(
        [
            grid,
            Artifact(json.dumps(card, indent=2).encode(), "application/json", "json", {"role": "model_card"}),
        ],
        inference_ms=train_ms,
        model=ModelRef(id=r.name, sha256=record.version),
    )


EXECUTOR: Executor[DDPMTrainingRequest] = Executor(run)
