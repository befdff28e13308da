"""Quality of an engine model against real MNIST, judged by a classifier this script trains itself.

    python bench/mnist_quality.py --data-root ../shared/data/mnist --model models/mnist [--per-label 100]

1. The judge: an MLP (784 -> 256 ReLU -> 10, scikit-learn) trained on the 60,000 training digits; its accuracy on
   the 10,000 test digits is the ceiling of conditional accuracy.
2. Conditional accuracy: the share of generated images (``--per-label`` per digit) the judge labels as asked.
3. A Fréchet distance in the judge's hidden layer (256 features) between generated and real test digits, beside the
   real-vs-real floor: two disjoint sets of real test digits of the same size. This is not Inception FID (its
   weights cannot be downloaded here); compare it only with itself.
4. Tables: samplers (``--samplers``: DDPM-1000, DDIM-50/20/10, DPM++-20/10) with seconds per image, and guidance
   scales (accuracy, diversity, FID).

Images of another size (a 32x32 padded model, or the 16x16 ``digits``) are centre-cropped or resized to 28x28.
``--smoke`` shrinks everything so the test suite keeps the script working on a small IDX set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.ddpm_quality import frechet  # noqa: E402
from core.ddpm.data import load_mnist  # noqa: E402


def to_28(images: torch.Tensor) -> np.ndarray:
    """(N, 1, R, R) in [-1, 1] -> (N, 784) in [0, 1]: 32 is centre-cropped (the padding removed), others resized."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    if x.shape[-1] == 32:
        x = x[..., 2:30, 2:30]
    elif x.shape[-1] != 28:
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    return x.reshape(x.shape[0], -1).cpu().numpy()


class Judge:
    def __init__(self, root: str | Path, hidden: int = 256, epochs: int = 20, limit: int | None = None, seed: int = 0):
        from sklearn.neural_network import MLPClassifier

        xtr, ytr, _ = load_mnist(root, 28, "train")
        xte, yte, _ = load_mnist(root, 28, "test")
        self.xtr, self.ytr = to_28(xtr[:limit]), ytr[:limit].numpy()
        self.xte, self.yte = to_28(xte), yte.numpy()
        self.clf = MLPClassifier((hidden,), max_iter=epochs, random_state=seed, early_stopping=False)
        self.clf.fit(self.xtr, self.ytr)
        self.ceiling = float(self.clf.score(self.xte, self.yte))

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0)

    def accuracy(self, x: np.ndarray, labels: np.ndarray) -> float:
        return float((self.clf.predict(x) == labels).mean())

    def fid(self, a: np.ndarray, b: np.ndarray) -> float:
        return frechet(self.features(a), self.features(b))

    def floor(self, n: int, seed: int = 0) -> float:
        """Real vs real at ``n`` images a side: two disjoint random halves of the test set."""
        idx = np.random.default_rng(seed).permutation(len(self.xte))
        return self.fid(self.xte[idx[:n]], self.xte[idx[n : 2 * n]])


def diversity(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance between images of the same label (pixel space, [0, 1])."""
    out = []
    for c in np.unique(labels):
        xs = x[labels == c]
        if len(xs) > 1:
            d = np.sqrt(((xs[:, None] - xs[None]) ** 2).sum(-1))
            out.append(d[np.triu_indices(len(xs), 1)].mean())
    return float(np.mean(out))


def draw(model, per_label: int, sampler: str, steps: int, guidance: float | None, seed: int = 0):
    labels = np.repeat(np.arange(10), per_label)
    t0 = time.perf_counter()
    images = model.generate(
        labels=[str(int(c)) for c in labels],
        num_images=len(labels),
        num_inference_steps=steps,
        sampler=sampler,
        guidance_scale=guidance,
        seed=seed,
    )
    return to_28(images), labels, (time.perf_counter() - t0) / len(labels)


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "mnist"))
    p.add_argument(
        "--model", default=str(REPO / "models" / "mnist"), help="a model folder, or several, comma-separated"
    )
    p.add_argument("--per-label", type=int, default=100)
    p.add_argument(
        "--samplers",
        default="ddpm:1000,ddim:50,ddim:20,ddim:10,dpmpp_2m:20,dpmpp_2m:10",
        help="sampler:steps,...; 'default:20' is the model's own sampler",
    )
    p.add_argument("--guidance", default="1,2,3,5,8")
    p.add_argument("--smoke", action="store_true", help="a few images and a short judge: keeps the script working")
    a = p.parse_args(argv)
    from core.ddpm.pipeline import DDPMEngineModel

    judge = Judge(a.data_root, epochs=3 if a.smoke else 20, limit=2000 if a.smoke else None)
    per_label = 2 if a.smoke else a.per_label
    n = 10 * per_label
    floor = judge.floor(min(n, len(judge.xte) // 2))
    print(
        f"judge: MLP 784-256-10, test accuracy (ceiling) {judge.ceiling:.4f}; "
        f"FID floor (real vs real, {n}): {floor:.2f}"
    )
    for path in a.model.split(","):  # several models: one judge for all
        if not Path(path).is_dir():
            print(f"no model at {path}: train one (see models/*/README.md), then run again")
            continue
        print(f"\n## {path}")
        evaluate(DDPMEngineModel.from_pretrained(path), judge, a, per_label, n, floor)
    return 0


def evaluate(model, judge: Judge, a: argparse.Namespace, per_label: int, n: int, floor: float) -> None:
    g = model.default_guidance_scale
    rows = []
    for spec in a.samplers.split(","):
        sampler, steps = spec.split(":")
        sampler = model.default_sampler if sampler == "default" else sampler
        if sampler not in model.samplers:  # e.g. dpmpp_2m for a flow model
            continue
        steps = min(int(steps), 4) if a.smoke else int(steps)
        x, labels, spi = draw(model, per_label, sampler, steps, g)
        rows.append(
            [
                f"{sampler}-{steps}",
                f"{spi:.3f}",
                f"{judge.accuracy(x, labels):.3f}",
                f"{judge.fid(judge.xte[:n], x):.2f}",
                f"{floor:.2f}",
            ]
        )
    table(f"Samplers ({n} images, guidance {g:g})", ["sampler", "s / image", "cond. accuracy", "FID", "floor"], rows)
    rows = []
    real_div = diversity(judge.xte[:n], judge.yte[:n])
    for scale in (float(s) for s in a.guidance.split(",")):
        x, labels, _ = draw(model, per_label, model.default_sampler, 4 if a.smoke else 20, scale)
        rows.append(
            [
                f"{scale:g}",
                f"{judge.accuracy(x, labels):.3f}",
                f"{diversity(x, labels):.2f}",
                f"{real_div:.2f}",
                f"{judge.fid(judge.xte[:n], x):.2f}",
            ]
        )
    table(
        f"Guidance ({model.default_sampler}-20)",
        ["guidance", "cond. accuracy", "diversity", "real diversity", "FID"],
        rows,
    )


if __name__ == "__main__":
    raise SystemExit(main())
