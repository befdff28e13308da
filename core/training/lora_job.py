"""LoRA fine-tuning of a diffusers Stable Diffusion model on an uploaded dataset (the standard text-to-image
LoRA loop: frozen VAE and text encoder, noise-prediction loss on the UNet's attention projections via peft).

The trained adapter is saved in the format ``pipe.load_lora_weights`` reads and registered for the tenant under
its name. The training state is checkpointed to storage so a job whose worker dies resumes and still succeeds;
a canceled job registers nothing.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.catalog import LORA_TRAINABLE
from core.contract import Artifact, Executor, RunContext, RunResult
from core.errors import JobError
from core.pipelines.building import BUILDING
from core.registry import ModelEntry
from core.schemas import LoraTrainingRequest, ModelRef
from core.training.datasets import captioned_images, check_images, extract_zip
from core.warm import Warm

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
LORA_FILE = "pytorch_lora_weights.safetensors"


STATE = "lora_state.pt"  # the checkpoint's name among the job's files


def load_pixels(pairs: list[tuple[Path, str]], resolution: int) -> torch.Tensor:
    """Resize the shorter side to ``resolution``, center-crop, scale to [-1, 1]: (N, 3, R, R)."""
    from PIL import Image

    out = []
    for path, _ in pairs:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = resolution / min(w, h)
            im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
            left, top = (im.width - resolution) // 2, (im.height - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            out.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1)
    return torch.from_numpy(np.stack(out))


@dataclass
class Trainee:
    """The base model's parts with LoRA adapters on them, and what trains them."""

    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    noise_scheduler: object
    params: list
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    alpha: float


def frozen_base_with_adapters(entry: ModelEntry, r: LoraTrainingRequest, device: str) -> Trainee:
    """A private copy of the base model (the served, cached one is never touched), frozen, with fresh adapters."""
    with BUILDING:  # the load and the adapters build modules (core/pipelines/building.py); a first import too
        import diffusers
        from peft import LoraConfig

        if entry.single_file is not None:  # a checkpoint from A1111's or ComfyUI's folders
            from core.pipelines.single_file import load_pipeline

            pipe = load_pipeline(entry.pipeline_class, entry.single_file, torch.float32, device)
        else:
            pipe = getattr(diffusers, entry.pipeline_class).from_pretrained(entry.source, dtype=torch.float32)
        unet, vae, te = pipe.unet.to(device), pipe.vae.to(device), pipe.text_encoder.to(device)
        for m in (unet, vae, te):
            m.requires_grad_(False)
        torch.manual_seed(r.seed)  # the adapters' gaussian init
        alpha = r.alpha or r.rank
        unet.add_adapter(
            LoraConfig(r=r.rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=UNET_TARGETS)
        )
        if r.train_text_encoder:
            te.add_adapter(
                LoraConfig(r=r.rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TEXT_TARGETS)
            )
    params = [q for m in (unet, te) for q in m.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=r.learning_rate, weight_decay=1e-2)
    noise_scheduler = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
    return Trainee(
        unet, vae, te, pipe.tokenizer, noise_scheduler, params, opt, torch.Generator().manual_seed(r.seed), alpha
    )


def resume(ctx: RunContext, t: Trainee, device: str) -> int:
    """The step an earlier attempt's checkpoint reached (0 without one), its state loaded into ``t``."""
    from peft.utils import set_peft_model_state_dict

    saved = ctx.load_checkpoint(STATE)
    if saved is None:
        return 0
    state = torch.load(io.BytesIO(saved), map_location=device, weights_only=True)  # never a pickle
    set_peft_model_state_dict(t.unet, state["unet"])
    if state.get("text_encoder"):
        set_peft_model_state_dict(t.text_encoder, state["text_encoder"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.generator.set_state(state["generator"])
    return state["step"]


def train_step(t: Trainee, pixels: torch.Tensor, ids: torch.Tensor, batch_size: int, device: str) -> float:
    """One step of the noise-prediction loss on the adapters; returns the loss."""
    gen = t.generator
    idx = torch.randint(0, pixels.shape[0], (batch_size,), generator=gen)
    x = pixels[idx].to(device)
    with torch.no_grad():
        latents = t.vae.encode(x).latent_dist.sample(generator=gen) * t.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=gen).to(device)
    steps = t.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (latents.shape[0],), generator=gen).to(device)
    noisy = t.noise_scheduler.add_noise(latents, noise, timesteps)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        hidden = t.text_encoder(ids[idx])[0]
        pred = t.unet(noisy, timesteps, hidden).sample
    if t.noise_scheduler.config.prediction_type == "v_prediction":
        target = t.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    loss = F.mse_loss(pred.float(), target.float())
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(t.params, 1.0)
    t.optimizer.step()
    return float(loss.detach())


def checkpoint(ctx: RunContext, t: Trainee, with_text_encoder: bool, step: int) -> None:
    from peft.utils import get_peft_model_state_dict

    buf = io.BytesIO()
    torch.save(
        {
            "unet": get_peft_model_state_dict(t.unet),
            "text_encoder": get_peft_model_state_dict(t.text_encoder) if with_text_encoder else None,
            "optimizer": t.optimizer.state_dict(),
            "generator": t.generator.get_state(),
            "step": step,
        },
        buf,
    )
    ctx.save_checkpoint(STATE, buf.getvalue())


def save_adapter(folder: Path, t: Trainee, with_text_encoder: bool) -> None:
    """In the format ``pipe.load_lora_weights`` reads."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(t.unet))
    te_layers = (
        convert_state_dict_to_diffusers(get_peft_model_state_dict(t.text_encoder)) if with_text_encoder else None
    )
    diffusers.StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers, safe_serialization=True
    )


def run(request: LoraTrainingRequest, entry: ModelEntry, ctx: RunContext, warm: Warm) -> RunResult:
    r, device = request, warm.device
    if entry.pipeline_class not in LORA_TRAINABLE:
        raise JobError("unsupported_task", f"LoRA training supports {LORA_TRAINABLE}, not {entry.pipeline_class}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # 1. data: images and captions, checked before any pixel is decoded
        root = extract_zip(ctx.open_input(r.dataset), work / "data")
        pairs = captioned_images(root)
        check_images(root, [path for path, _ in pairs], r.resolution, 3)
        pixels = load_pixels(pairs, r.resolution)
        # 2. the frozen base model with adapters, and the captions' tokens
        t = frozen_base_with_adapters(entry, r, device)
        tok = t.tokenizer
        with torch.no_grad():
            ids = tok(
                [c for _, c in pairs],
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
        # 3. resume from a checkpoint an earlier attempt saved
        start = resume(ctx, t, device)
        # 4. the loop, checkpointing every fifth of the run
        every = max(10, r.max_train_steps // 5)
        losses: list[float] = []
        t0 = time.perf_counter()
        t.unet.train()
        for done in range(start + 1, r.max_train_steps + 1):
            losses.append(train_step(t, pixels, ids, r.train_batch_size, device))
            if done % every == 0 and done < r.max_train_steps:
                checkpoint(ctx, t, r.train_text_encoder, done)
            ctx.progress(done, r.max_train_steps, loss=round(losses[-1], 5))  # raises JobCancelled when asked
        train_ms = (time.perf_counter() - t0) * 1000
        # 5. save, and register it for the tenant
        folder = work / "lora"
        save_adapter(folder, t, r.train_text_encoder)
        card = {
            "name": r.name,
            "base_model": entry.id,
            "base_model_sha256": entry.version,
            "base_pipeline_class": entry.pipeline_class,
            "rank": r.rank,
            "alpha": t.alpha,
            "steps": r.max_train_steps,
            "final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
            "first_loss": losses[0] if losses and start == 0 else None,
            "dataset_size": len(pairs),
            "resolution": r.resolution,
            "train_text_encoder": bool(r.train_text_encoder),
            "train_seconds": round(train_ms / 1000, 2),
        }
        (folder / "card.json").write_text(json.dumps(card, indent=2))
        extra = {"base_model": entry.id, "base_pipeline_class": entry.pipeline_class}
        record = ctx.register("lora", r.name, folder, extra)
        weights = (folder / LORA_FILE).read_bytes()
    card["version"] = record.version
    return RunResult(
        [
            Artifact(weights, "application/octet-stream", "safetensors", {"role": "lora", "name": r.name}),
            Artifact(json.dumps(card, indent=2).encode(), "application/json", "json", {"role": "lora_card"}),
        ],
        inference_ms=train_ms,
        model=ModelRef(id=entry.id, sha256=entry.version),
    )


EXECUTOR: Executor[LoraTrainingRequest] = Executor(run)
