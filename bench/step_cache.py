"""Step caching: quality against speed, per method and knob, on the engine's models and on tiny transformer pipelines.

    python bench/step_cache.py [--models digits,mnist,/path/to/an/engine/dit] [--per-label 30]
                               [--data-root ../shared/data/mnist] [--pipelines] [--smoke]

1. Each engine model at its own defaults (sampler, steps, guidance), uncached and with each setting of the method
   its network takes (the U-Net: DeepCache's interval; the DiT: First-Block Cache's threshold).
2. Seconds per image: the best of ``--repeats`` draws of 10 images, the settings interleaved (the machine's noise
   hits them alike); the fraction of denoiser calls that reused the cache.
3. Quality: ``--per-label`` images per label judged by a classifier trained on real digits (conditional accuracy)
   and a Fréchet distance in its hidden features against real test digits, beside the real-vs-real floor at the same
   count: `digits` by bench/ddpm_quality.py's judge (scikit-learn's digits), 28² models by bench/mnist_quality.py's
   (MNIST's 60,000 training digits; skipped without ``--data-root``).
4. The default: the fastest setting within 1 accuracy point and 10% FID of the uncached run.
5. ``--pipelines``: tiny random Flux, Wan and CogVideoX pipelines (tests/fixtures/tiny.py) with diffusers' hooks:
   speed-up and skipped fraction only. Random weights say nothing of quality, so no quality column is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from core.catalog import CACHE_METHODS, ENGINE_CACHE_METHODS  # noqa: E402
from core.ddpm.dit import DiT  # noqa: E402
from core.ddpm.pipeline import DDPMEngineModel  # noqa: E402

SETTINGS = {
    "deep": [2, 3, 4, 5, 7, 10],
    "first_block": [0.02, 0.05, 0.1, 0.2, 0.3],
    "taylorseer": [2, 3, 5],
    "mag": [0.06],
}


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    sys.stdout.flush()


def network(model: DDPMEngineModel) -> str:
    return "dit" if isinstance(model.unet, DiT) else "unet"


def draw(model: DDPMEngineModel, labels: list[str], setting: tuple[str, float] | None, seed: int = 0):
    cache = model.step_cache(*setting) if setting else None
    t0 = time.perf_counter()
    x = model.generate(labels=labels, num_images=len(labels), seed=seed, step_cache=cache)
    return x, time.perf_counter() - t0, cache.reused_fraction if cache else 0.0


class DigitsJudge:
    """scikit-learn's digits (8x8, 0-16): bench/ddpm_quality.py's SVC and MLP features."""

    def __init__(self):
        from bench.ddpm_quality import Judge, to_digits_features

        self.judge, self.to = Judge(), to_digits_features
        self.ceiling = self.judge.ceiling

    def score(self, x: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
        f = self.to(x)
        return self.judge.accuracy(f, labels), self.judge.fid(self.judge.xte[: len(f)], f)

    def floor(self, n: int) -> float:
        return self.judge.fid(self.judge.xte[:n], self.judge.xtr[:n])


class MnistJudge:
    """MNIST (28x28): bench/mnist_quality.py's MLP judge trained on the 60,000 training digits."""

    def __init__(self, root: str):
        from bench.mnist_quality import Judge, to_28

        self.judge, self.to = Judge(root), to_28
        self.ceiling = self.judge.ceiling

    def score(self, x: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
        f = self.to(x)
        return self.judge.accuracy(f, labels), self.judge.fid(self.judge.xte[: len(f)], f)

    def floor(self, n: int) -> float:
        return self.judge.floor(n)


def engine_rows(model: DDPMEngineModel, judge, per_label: int, repeats: int, settings: list) -> tuple[list, str]:
    labels = [str(k) for k in range(10) for _ in range(per_label)]
    truth = np.array([int(k) for k in labels])
    timing = [str(k) for k in range(10)]
    # 1. speed: the best of `repeats` rounds, the settings interleaved within each round
    best = {s: float("inf") for s in settings}
    for _ in range(repeats):
        for s in settings:
            best[s] = min(best[s], draw(model, timing, s)[1] / len(timing))
    # 2. quality at the same seed for every setting
    rows, scored = [], []
    for s in settings:
        x, _, reused = draw(model, labels, s)
        acc, fid = judge.score(x, truth)
        scored.append((s, best[s], acc, fid))
        rows.append([s, best[s], reused, acc, fid])
    base = scored[0]
    good = [r for r in scored[1:] if r[2] >= base[2] - 0.01 and r[3] <= base[3] * 1.10]
    choice = min(good, key=lambda r: r[1]) if good else None
    out = []
    for s, spi, reused, acc, fid in rows:
        name = "uncached" if s is None else f"{s[0]} {CACHE_METHODS[s[0]].knob}={s[1]:g}"
        mark = " (default)" if choice and s == choice[0] else ""
        out.append(
            [name + mark, f"{spi * 1000:.1f}", f"{base[1] / spi:.2f}x", f"{reused:.2f}", f"{acc:.3f}", f"{fid:.2f}"]
        )
    picked = "none within the bounds" if choice is None else f"{choice[0][0]} {choice[0][1]:g}"
    return out, picked


def engines(a: argparse.Namespace) -> None:
    for name in a.models.split(","):
        path = Path(name) if "/" in name else REPO / "models" / name
        model = DDPMEngineModel.from_pretrained(path)
        if model.sample_size == 28:
            if not a.data_root or not Path(a.data_root).is_dir():
                print(f"\n{path.name}: skipped (MNIST's IDX files not found at --data-root {a.data_root!r})")
                continue
            judge = MnistJudge(a.data_root)
        else:
            judge = DigitsJudge()
        settings = [None] + [(m, v) for m in ENGINE_CACHE_METHODS[network(model)] for v in SETTINGS[m]]
        n = 10 * a.per_label
        rows, picked = engine_rows(model, judge, a.per_label, a.repeats, settings)
        table(
            f"{path.name} ({network(model)}, {model.default_sampler}-{model.default_num_inference_steps}, guidance "
            f"{model.default_guidance_scale:g}, {n} images; CPU threads {torch.get_num_threads()}; classifier "
            f"ceiling {judge.ceiling:.3f}, real-vs-real FID floor {judge.floor(n):.2f}); default: {picked}",
            ["setting", "ms / image", "speed-up", "calls reused", "cond. accuracy", "FID"],
            rows,
        )


def pipelines(a: argparse.Namespace) -> None:
    from diffusers import DiffusionPipeline

    from core.catalog import FAMILY_CACHE_METHODS
    from core.pipelines.step_cache import step_cache
    from core.schemas import StepCache
    from tests.fixtures.tiny import build_tiny_models

    steps = 8 if a.smoke else 20
    shapes = {"tiny-flux": dict(height=256, width=256), "tiny-wan": dict(height=64, width=64, num_frames=9)}
    if a.smoke:
        shapes = {"tiny-flux": dict(height=32, width=32), "tiny-wan": dict(height=32, width=32, num_frames=5)}
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for kind, shape in shapes.items():
            build_tiny_models(tmp, (kind,))
            pipe = DiffusionPipeline.from_pretrained(f"{tmp}/{kind}")
            pipe.set_progress_bar_config(disable=True)
            family = type(pipe).__name__
            settings = [None] + [(m, v) for m in FAMILY_CACHE_METHODS[family] for v in SETTINGS[m]]
            best = {s: float("inf") for s in settings}
            reused = {}
            for _ in range(a.repeats):
                for s in settings:
                    cache = StepCache(method=s[0], **{CACHE_METHODS[s[0]].knob: s[1]}) if s else None
                    t0 = time.perf_counter()
                    with step_cache(pipe, cache, steps) as counted, torch.inference_mode():
                        pipe(prompt="a cat", num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                             output_type="latent", **shape)  # fmt: skip
                    best[s] = min(best[s], time.perf_counter() - t0)
                    reused[s] = counted.reused / counted.calls if counted else 0.0
            for s in settings:
                name = "uncached" if s is None else f"{s[0]} {CACHE_METHODS[s[0]].knob}={s[1]:g}"
                size = "x".join(str(shape[k]) for k in ("width", "height", "num_frames") if k in shape)
                rows.append([family, size, name, f"{best[s] * 1000:.0f}", f"{best[None] / best[s]:.2f}x",
                             f"{reused[s]:.2f}"])  # fmt: skip
        table(
            f"Tiny random transformer pipelines, diffusers' hooks ({steps} steps, latents out; random weights: "
            "speed and skipped calls only, no quality)",
            ["family", "size", "setting", "ms / call", "speed-up", "calls reused"],
            rows,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="digits,mnist")
    p.add_argument("--per-label", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "mnist"))
    p.add_argument("--pipelines", action="store_true", help="also the tiny diffusers transformer pipelines")
    p.add_argument("--no-engines", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier timings on a shared CPU)")
    p.add_argument("--smoke", action="store_true", help="tiny counts: keeps the script working in the test suite")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.smoke:
        a.per_label, a.repeats = 2, 1
        SETTINGS.update(deep=[3], first_block=[0.1], taylorseer=[3], mag=[0.06])
    if not a.no_engines:
        engines(a)
    if a.pipelines:
        pipelines(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
