"""Quality of the bundled `digits` engine model, printed as tables.

    python bench/ddpm_quality.py [--model models/digits] [--per-label 20] [--schedule-steps 400]

Metrics
- conditional accuracy: the share of images drawn for label k that an independent classifier reads as k.
  The classifier is scikit-learn's SVC (RBF, gamma=0.001) trained on half of the real digits (stratified
  split, seed 0); its accuracy on the other, held-out half is printed as the ceiling. Generated 16x16 images
  are area-downsampled to the data set's 8x8 grid and 0..16 range first.
- FID: the Frechet distance between Gaussians fitted to features of real and generated images. Feature space:
  the 64 ReLU hidden units of a scikit-learn MLPClassifier (64 hidden units, seed 0) trained on the same real
  half. The floor is real-vs-real: held-out real digits against an equal number of training-half digits.
- diversity: the mean pairwise L2 distance between images of the same label (8x8, 0..1 scale), next to the
  same figure for real digits.
- seconds per image: wall time of the batched draw divided by the number of images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.ddpm.data import load_digits_dataset, to_digits_features  # noqa: E402
from core.ddpm.pipeline import DDPMEngineModel  # noqa: E402


def frechet(fa: np.ndarray, fb: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of feature vectors (rows)."""
    mu1, mu2 = fa.mean(0), fb.mean(0)
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


class Judge:
    def __init__(self):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
        from sklearn.svm import SVC

        d = load_digits()
        xtr, xte, ytr, yte = train_test_split(d.data, d.target, test_size=0.5, stratify=d.target, random_state=0)
        self.svc = SVC(gamma=0.001).fit(xtr, ytr)
        self.mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=2000, random_state=0).fit(xtr / 16, ytr)
        self.ceiling = float((self.svc.predict(xte) == yte).mean())
        self.xtr, self.xte, self.ytr, self.yte = xtr, xte, ytr, yte

    def features(self, x64: np.ndarray) -> np.ndarray:
        return np.maximum(0, (x64 / 16) @ self.mlp.coefs_[0] + self.mlp.intercepts_[0])

    def accuracy(self, x64: np.ndarray, labels: np.ndarray) -> float:
        return float((self.svc.predict(x64) == labels).mean())

    def fid(self, a64: np.ndarray, b64: np.ndarray) -> float:
        return frechet(self.features(a64), self.features(b64))

    def fid_floor(self) -> float:
        n = len(self.xte)
        return self.fid(self.xte, self.xtr[:n])


def diversity(x64: np.ndarray, labels: np.ndarray) -> float:
    out = []
    for k in np.unique(labels):
        v = x64[labels == k] / 16
        if len(v) > 1:
            d = np.sqrt(((v[:, None] - v[None]) ** 2).sum(-1))
            out.append(d[np.triu_indices(len(v), 1)].mean())
    return float(np.mean(out))


def draw(model: DDPMEngineModel, per_label: int, sampler: str, steps: int, guidance: float | None, seed: int = 0):
    labels = [str(k) for k in range(10) for _ in range(per_label)]
    t0 = time.perf_counter()
    images = model.generate(
        labels, num_images=len(labels), num_inference_steps=steps, sampler=sampler, guidance_scale=guidance, seed=seed
    )
    dt = time.perf_counter() - t0
    return to_digits_features(images), np.array([int(k) for k in labels]), dt / len(labels)


def table(title: str, header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(h)), *(len(f"{r[i]}") for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(f"{c}".ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def small_net(backbone: str = "unet"):
    """The bundled model's U-Net, or a DiT of about the same parameter count (1.1 M)."""
    from core.ddpm.dit import DiT, DiTConfig
    from core.ddpm.unet import UNet, UNetConfig

    if backbone == "dit":
        return DiT(DiTConfig(sample_size=16, patch_size=2, hidden_size=96, depth=6, num_heads=4, num_classes=10))
    return UNet(
        UNetConfig(
            sample_size=16,
            base_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(8,),
            num_classes=10,
        )
    )


def train_small(schedule: str, steps: int, seed: int = 0, backbone: str = "unet") -> DDPMEngineModel:
    from core.ddpm.process import make_objective
    from core.ddpm.training import TrainConfig, train

    x, y, names = load_digits_dataset(16)
    torch.manual_seed(seed)
    unet = small_net(backbone)
    sched = {"kind": "ddpm", "num_train_timesteps": 1000, "beta_schedule": schedule, "prediction_type": "epsilon"}
    ema = train(
        unet,
        make_objective(sched),
        x,
        y,
        TrainConfig(max_steps=steps, batch_size=128, learning_rate=1e-3, warmup_steps=min(200, steps // 5), seed=seed),
    )
    return DDPMEngineModel(ema.model, sched, names, default_guidance_scale=2.0)


def training_speed(steps: int = 15, batch: int = 128) -> list[list]:
    """Our U-Net + process vs diffusers' UNet2DModel + DDPMScheduler of similar size, same data and batch."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DModel

    from core.ddpm.process import make_objective
    from core.ddpm.unet import UNet, UNetConfig, count_parameters

    x, y, _ = load_digits_dataset(16)
    g = torch.Generator().manual_seed(0)
    ours = UNet(
        UNetConfig(
            sample_size=16,
            base_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(8,),
            num_classes=10,
            dropout=0.1,
        )
    )
    obj = make_objective({"kind": "ddpm", "num_train_timesteps": 1000})
    theirs = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=11,
        norm_num_groups=8,
        dropout=0.1,
        attention_head_dim=16,
    )
    sched = DDPMScheduler(num_train_timesteps=1000)

    def step_ours(opt, idx):
        loss = obj.loss(ours, x[idx], y[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def step_theirs(opt, idx):
        x0, yy = x[idx], y[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (len(idx),), generator=g)
        pred = theirs(sched.add_noise(x0, noise, t), t, class_labels=yy).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()

    rows = []
    for name, model, fn in (
        ("diffuserve engine U-Net", ours, step_ours),
        ("diffusers UNet2DModel", theirs, step_theirs),
    ):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(3):
            fn(opt, torch.randint(0, len(x), (batch,), generator=g))
        t0 = time.perf_counter()
        for _ in range(steps):
            fn(opt, torch.randint(0, len(x), (batch,), generator=g))
        sps = steps / (time.perf_counter() - t0)
        rows.append([name, f"{count_parameters(model):,}", f"{sps:.2f}", f"{sps * batch:.0f}"])
    ratio = float(rows[0][2]) / float(rows[1][2])
    rows.append(["ratio ours / diffusers", "", f"{ratio:.2f}x", ""])
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "models" / "digits"))
    p.add_argument("--per-label", type=int, default=20)
    p.add_argument(
        "--schedule-steps", type=int, default=400, help="training budget of each model in the schedule table"
    )
    p.add_argument(
        "--skip", default="", help="comma list of tables to skip: samplers,guidance,schedules,backbones,speed"
    )
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    skip = set(a.skip.split(","))
    judge = Judge()
    floor = judge.fid_floor()
    real_div = diversity(judge.xte, judge.yte)
    model = DDPMEngineModel.from_pretrained(a.model)
    g = model.default_guidance_scale
    print(f"model {a.model} (sha256 {model.sha256[:12]}), {a.per_label} images per label, default guidance {g}")
    print(
        f"classifier ceiling (SVC on held-out real digits): {judge.ceiling:.3f}; FID floor (real vs real): {floor:.2f}"
    )

    results = {}
    if "samplers" not in skip:
        rows = []
        for name, sampler, steps in (
            ("DDPM-1000", "ddpm", 1000),
            ("DDIM-50", "ddim", 50),
            ("DDIM-20", "ddim", 20),
            ("DDIM-10", "ddim", 10),
            ("DPM++-20", "dpmpp_2m", 20),
            ("DPM++-10", "dpmpp_2m", 10),
        ):
            x64, labels, spi = draw(model, a.per_label, sampler, steps, g)
            acc = judge.accuracy(x64, labels)
            results[name] = (acc, spi)
            rows.append(
                [
                    name,
                    f"{spi * 1000:.1f}",
                    f"{acc:.3f}",
                    f"{judge.ceiling:.3f}",
                    f"{judge.fid(judge.xte, x64):.2f}",
                    f"{floor:.2f}",
                ]
            )
        table(
            f"Samplers (guidance {g:.1f})",
            ["sampler", "ms / image", "cond. accuracy", "ceiling", "FID", "FID floor"],
            rows,
        )
        speedup = results["DDPM-1000"][1] / results["DDIM-50"][1]
        gap = (results["DDPM-1000"][0] - results["DDIM-50"][0]) * 100
        print(
            f"DDIM-50 vs DDPM-1000: {speedup:.1f}x faster, accuracy {gap:+.1f} points behind "
            f"(bar: >= 15x, within 2 points; DDIM-50 accuracy >= 0.95: {results['DDIM-50'][0]:.3f})"
        )
        dpm_gap = (results["DDIM-50"][0] - results["DPM++-10"][0]) * 100
        print(f"DPM++-10 vs DDIM-50: accuracy {dpm_gap:+.1f} points behind (bar: within 2 points)")

    if "guidance" not in skip:
        rows = []
        for scale in (1.0, 1.5, 2.0, 3.0, 5.0, 10.0):
            x64, labels, _ = draw(model, a.per_label, "ddim", 50, scale)
            rows.append(
                [
                    f"{scale:g}",
                    f"{judge.accuracy(x64, labels):.3f}",
                    f"{diversity(x64, labels):.3f}",
                    f"{real_div:.3f}",
                    f"{judge.fid(judge.xte, x64):.2f}",
                ]
            )
        table("Guidance scale (DDIM-50)", ["guidance", "cond. accuracy", "diversity", "real diversity", "FID"], rows)

    if "schedules" not in skip:
        rows = []
        for schedule in ("linear", "cosine"):
            t0 = time.perf_counter()
            m = train_small(schedule, a.schedule_steps)
            train_s = time.perf_counter() - t0
            x64, labels, _ = draw(m, a.per_label, "ddim", 50, 2.0)
            rows.append(
                [
                    schedule,
                    a.schedule_steps,
                    f"{train_s:.0f}",
                    f"{judge.accuracy(x64, labels):.3f}",
                    f"{judge.fid(judge.xte, x64):.2f}",
                ]
            )
        table(
            f"Noise schedule, same budget ({a.schedule_steps} steps x 128, DDIM-50, guidance 2)",
            ["schedule", "train steps", "train s", "cond. accuracy", "FID"],
            rows,
        )

    if "backbones" not in skip:
        from core.ddpm.unet import count_parameters

        rows = []
        for backbone in ("unet", "dit"):
            t0 = time.perf_counter()
            m = train_small("linear", a.schedule_steps, backbone=backbone)
            train_s = time.perf_counter() - t0
            x64, labels, spi = draw(m, a.per_label, "ddim", 50, 2.0)
            rows.append(
                [
                    "U-Net" if backbone == "unet" else "DiT (patch 2, 6 blocks x 96)",
                    f"{count_parameters(m.unet):,}",
                    f"{a.schedule_steps / train_s:.2f}",
                    f"{spi * 1000:.1f}",
                    f"{judge.accuracy(x64, labels):.3f}",
                    f"{judge.fid(judge.xte, x64):.2f}",
                ]
            )
        table(
            f"Backbones at about equal parameters, same budget ({a.schedule_steps} steps x 128, DDIM-50, guidance 2)",
            ["backbone", "parameters", "train steps / s", "ms / image", "cond. accuracy", "FID"],
            rows,
        )

    if "speed" not in skip:
        table(
            f"Training speed (batch 128, 16x16, CPU threads: {torch.get_num_threads()})",
            ["U-Net", "parameters", "steps / s", "images / s"],
            training_speed(),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
