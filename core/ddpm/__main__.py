"""Command line for the engine.

python -m core.ddpm train --dataset digits --out models/digits --max-steps 4000 --seed 0
python -m core.ddpm sample --checkpoint models/digits --label 7 --num-images 16 --out grid.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m core.ddpm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and save it with save_pretrained")
    t.add_argument("--dataset", default="digits", help="digits | mnist | cifar10 | path to an image folder")
    t.add_argument("--data-root", default="data", help="mnist: the folder of its IDX files (gzipped or not)")
    t.add_argument(
        "--upsample", choices=["nearest", "bilinear"], default="nearest", help="digits: how 8x8 becomes --resolution"
    )
    t.add_argument("--out", required=True, help="output model folder")
    t.add_argument("--resolution", type=int, default=16)
    t.add_argument("--channels", type=int, default=1)
    t.add_argument("--base-channels", type=int, default=32)
    t.add_argument("--channel-mult", type=_ints, default=(1, 2, 2))
    t.add_argument("--num-res-blocks", type=int, default=1)
    t.add_argument("--attention-resolutions", type=_ints, default=(8,))
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--backbone", choices=["unet", "dit"], default="unet", help="the denoising network")
    t.add_argument("--patch-size", type=int, default=2, help="dit: pixels per patch side")
    t.add_argument("--hidden-size", type=int, default=128, help="dit: token width")
    t.add_argument("--depth", type=int, default=6, help="dit: transformer blocks")
    t.add_argument("--num-heads", type=int, default=4, help="dit: attention heads")
    t.add_argument("--pos-embed", choices=["sincos", "learned"], default="sincos", help="dit: position embedding")
    t.add_argument("--objective", choices=["ddpm", "flow"], default="ddpm")
    t.add_argument("--beta-schedule", default="linear")
    t.add_argument("--prediction-type", default="epsilon")
    t.add_argument("--num-train-timesteps", type=int, default=1000)
    t.add_argument("--unconditional", action="store_true", help="ignore class labels")
    t.add_argument("--max-steps", type=int, default=4000)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--warmup-steps", type=int, default=200)
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--class-dropout", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--checkpoint-every", type=int, default=500)
    t.add_argument("--state", default=None, help="training-state file for resuming (default: OUT/train_state.pt)")
    t.add_argument("--guidance-scale", type=float, default=2.0, help="default guidance scale stored with the model")
    t.add_argument("--default-steps", type=int, default=50, help="default sampling steps stored with the model")
    t.add_argument("--default-sampler", default=None, help="default sampler stored with the model (e.g. dpmpp_2m)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too (always on CUDA)")
    t.add_argument("--device", default="cuda" if _cuda() else "cpu")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")

    s = sub.add_parser("sample", help="draw a grid of images from a saved model")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--label", action="append", default=None, help="class label (repeat or comma-separate)")
    s.add_argument("--num-images", type=int, default=16)
    s.add_argument("--num-inference-steps", type=int, default=None)
    s.add_argument("--sampler", default=None, help="ddim | ddpm | euler")
    s.add_argument("--guidance-scale", type=float, default=None)
    s.add_argument("--eta", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="PNG file for the grid")
    s.add_argument("--device", default="cuda" if _cuda() else "cpu")
    return p


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_train(a: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from core.ddpm.data import load_dataset
    from core.ddpm.dit import DiT, DiTConfig
    from core.ddpm.pipeline import DDPMEngineModel
    from core.ddpm.process import make_objective
    from core.ddpm.training import TrainConfig, train
    from core.ddpm.unet import UNet, UNetConfig, count_parameters

    if a.threads:
        torch.set_num_threads(a.threads)
    images, labels, names = load_dataset(a.dataset, a.resolution, a.channels, a.data_root, a.upsample)
    if a.unconditional:
        labels, names = None, None
    num_classes = len(names) if names else None
    if a.backbone == "dit":
        net_cfg = DiTConfig(
            sample_size=a.resolution,
            in_channels=a.channels,
            patch_size=a.patch_size,
            hidden_size=a.hidden_size,
            depth=a.depth,
            num_heads=a.num_heads,
            num_classes=num_classes,
            pos_embed=a.pos_embed,
        )
    else:
        net_cfg = UNetConfig(
            sample_size=a.resolution,
            in_channels=a.channels,
            base_channels=a.base_channels,
            channel_mult=a.channel_mult,
            num_res_blocks=a.num_res_blocks,
            attention_resolutions=a.attention_resolutions,
            dropout=a.dropout,
            num_classes=num_classes,
        )
    sched_cfg = (
        {"kind": "flow"}
        if a.objective == "flow"
        else {
            "kind": "ddpm",
            "num_train_timesteps": a.num_train_timesteps,
            "beta_schedule": a.beta_schedule,
            "prediction_type": a.prediction_type,
        }
    )
    objective = make_objective(sched_cfg)
    cfg = TrainConfig(
        max_steps=a.max_steps,
        batch_size=a.batch_size,
        learning_rate=a.learning_rate,
        warmup_steps=a.warmup_steps,
        ema_decay=a.ema_decay,
        class_dropout=a.class_dropout,
        grad_clip=a.grad_clip,
        seed=a.seed,
        checkpoint_every=a.checkpoint_every,
        bf16=a.bf16,
    )
    torch.manual_seed(a.seed)
    model = DiT(net_cfg) if a.backbone == "dit" else UNet(net_cfg)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    state = Path(a.state) if a.state else out / "train_state.pt"
    print(
        f"{count_parameters(model):,} parameters, {images.shape[0]} images {tuple(images.shape[1:])}", file=sys.stderr
    )
    bar = tqdm(total=cfg.max_steps, desc="train", unit="step")
    losses: list[float] = []
    elapsed = [0.0]

    def progress(p) -> None:
        if bar.n == 0 and p.step > 1:
            bar.update(p.step - 1)  # resumed
        losses.append(p.loss)
        elapsed[0] = p.elapsed_s
        bar.update(1)
        bar.set_postfix(loss=f"{p.loss:.4f}", img_s=f"{p.images_per_s:.0f}")

    t0 = time.perf_counter()
    ema = train(model, objective, images, labels, cfg, callback=progress, state_path=state, device=a.device)
    bar.close()
    seconds = time.perf_counter() - t0
    if not losses and state.exists():  # resumed with nothing left to train: the state knows the time spent
        elapsed[0] = float(torch.load(state, map_location="cpu", weights_only=True).get("elapsed_s", 0.0))
    tail = losses[-100:] or [float("nan")]
    meta = {
        "dataset": a.dataset,
        **({"upsample": a.upsample} if a.dataset == "digits" else {}),
        "command": "python -m core.ddpm " + " ".join(sys.argv[1:]),
        "train": {**cfg.__dict__},
        "train_seconds": round(elapsed[0] or seconds, 1),  # all runs of a resumed training
        "final_loss_mean_last_100": sum(tail) / len(tail),
        "parameters": count_parameters(model),
        "device": str(a.device),
        "torch": torch.__version__,
    }
    engine = DDPMEngineModel(
        ema.model.cpu(),
        sched_cfg,
        names,
        default_guidance_scale=a.guidance_scale,
        default_num_inference_steps=a.default_steps,
        metadata=meta,
        default_sampler=a.default_sampler,
    )
    engine.save_pretrained(out)
    print(json.dumps({"out": str(out), "seconds": meta["train_seconds"], "loss": meta["final_loss_mean_last_100"]}))
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.ddpm.pipeline import DDPMEngineModel, make_grid

    model = DDPMEngineModel.from_pretrained(a.checkpoint, device=a.device)
    labels = None
    if a.label:
        labels = [lbl for item in a.label for lbl in item.split(",") if lbl]
        if len(labels) not in (1, a.num_images):
            labels = (labels * a.num_images)[: a.num_images]
    bar = tqdm(desc="sample", unit="step")

    def progress(step: int, total: int) -> None:
        bar.total = total
        bar.update(1)

    images = model.generate(
        labels=labels,
        num_images=a.num_images,
        num_inference_steps=a.num_inference_steps,
        sampler=a.sampler,
        guidance_scale=a.guidance_scale,
        eta=a.eta,
        seed=a.seed,
        callback=progress,
    )
    bar.close()
    make_grid(images, nrow=min(8, a.num_images)).save(a.out)
    print(a.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return cmd_train(a) if a.command == "train" else cmd_sample(a)


if __name__ == "__main__":
    raise SystemExit(main())
