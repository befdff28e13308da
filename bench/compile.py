"""The compiled engine (``COMPILE=1``, ``core/ddpm/compile.py``): ms per denoiser step, eager against compiled, for
the bundled models (and a DiT of the same class size with random weights), at 1 and 8 images.

    python bench/compile.py                                   # digits, mnist, dit; 1 and 8 images; a cold cache
    python bench/compile.py --cache-dir /tmp/inductor-cache   # run twice: the second run finds the kernels cached
    python bench/compile.py --models digits --batches 8 --static   # and a static compile for each batch size

One step is one call of the network on the batch the sampler gives it: ``images`` x 2 where the model's default
guidance is not 1 (classifier-free guidance: the conditional and the null class in one batch; digits 1.5, mnist
1.0). The compiled network is the worker's: compiled in place and warmed up on batch 1 and the dynamic batches
(``compile s`` is that warm-up, what a worker pays when it loads the model: minutes with a cold inductor cache, seconds
with a warm one). Eager and compiled are timed in alternating rounds on the same inputs (a shared machine drifts);
the median round is reported. ``--static``: a static compile of each batch size besides (``dynamic=False``), what
one compile per size would cost and give. ``max |diff|``: compiled against eager on the same inputs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.ddpm.compile import compile_network, use_inductor_cache, warm_up  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def load(name: str, device: str) -> tuple[torch.nn.Module, float, str]:
    """(network, default guidance, label) of a bundled model, or of ``dit``: a DiT sized like them (random)."""
    if name == "dit":
        from core.ddpm.dit import DiT, DiTConfig

        torch.manual_seed(0)
        net = DiT(DiTConfig(sample_size=16, patch_size=2, hidden_size=128, depth=6, num_heads=4, num_classes=10))
        with torch.no_grad():
            for p in net.parameters():  # past the zero start, so the output is not trivially equal
                p.normal_(0, 0.05)
        n = sum(p.numel() for p in net.parameters()) / 1e6
        return net.to(device).eval().requires_grad_(False), 1.5, f"DiT 16² (random, {n:.1f}M)"
    from core.ddpm.pipeline import DDPMEngineModel

    model = DDPMEngineModel.from_pretrained(REPO / "models" / name, device=device)
    cfg = model.unet.config
    return model.unet.requires_grad_(False), model.default_guidance_scale, f"{name} U-Net {cfg.sample_size}²"


def inputs(net: torch.nn.Module, n: int, device: str) -> tuple:
    g = torch.Generator().manual_seed(n)
    cfg = net.config
    x = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g).to(device)
    t = torch.full((n,), 500.0, device=device)
    y = torch.randint(0, cfg.num_classes + 1, (n,), generator=g).to(device) if cfg.num_classes else None
    return x, t, y


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ms_per_call(net, args, calls: int, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        net(*args)
    sync(device)
    return (time.perf_counter() - t0) / calls * 1000


def alternate(nets: list, args, rounds: int, calls: int, device: str) -> list[float]:
    """Median ms per call of each network, timed in alternating rounds."""
    times: list[list[float]] = [[] for _ in nets]
    for net in nets:
        ms_per_call(net, args, 2, device)  # warm caches and allocators
    for _ in range(rounds):
        for i, net in enumerate(nets):
            times[i].append(ms_per_call(net, args, calls, device))
    return [statistics.median(t) for t in times]


def engine_rows(
    models: list[str],
    batches: list[int],
    device: str,
    backend: str = "inductor",
    rounds: int = 5,
    calls: int = 5,
    static: bool = False,
    cuda_graphs: bool = False,
    cache_dir: Path | None = None,
) -> list[dict]:
    """One row per (model, images[, static]): eager and compiled ms per step, the compile's seconds, the largest
    difference. Also what ``bench/gpu.py`` prints for the engine on CUDA."""
    rows = []
    for name in models:
        eager, guidance, label = load(name, device)
        net = copy.deepcopy(eager)
        how = compile_network(net, backend, cuda_graphs=cuda_graphs, cache_dir=cache_dir)
        compile_s = warm_up(net)
        for images in batches:
            n = images * (2 if guidance != 1.0 else 1)
            args = inputs(eager, n, device)
            with torch.no_grad():
                want = eager(*args).float()
                got = net(*args).float().clone()
                nets, extra = [eager, net], {}
                if static:
                    fixed = copy.deepcopy(eager)
                    fixed.compile(backend=backend, fullgraph=True, dynamic=False)
                    t0 = time.perf_counter()
                    fixed(*args)
                    sync(device)
                    extra["static_compile_s"] = time.perf_counter() - t0
                    nets.append(fixed)
                measured = alternate(nets, args, rounds, calls, device)
            row = dict(model=label, images=images, batch=n, eager_ms=measured[0], compiled_ms=measured[1])
            row.update(compile_s=compile_s, diff=(got - want).abs().max().item(), how=how, **extra)
            if static:
                row["static_ms"] = measured[2]
            rows.append(row)
            compile_s = None  # the warm-up compiled every batch size: reported once per model
    return rows


def print_table(rows: list[dict], static: bool) -> None:
    head = "| model | images | batch (CFG) | eager ms/step | compiled ms/step | speed-up | compile s | max abs diff |"
    rule = "|---|---|---|---|---|---|---|---|"
    if static:
        head += " static ms/step | static compile s |"
        rule += "---|---|"
    print(head)
    print(rule)
    for r in rows:
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "(same)"
        line = (
            f"| {r['model']} | {r['images']} | {r['batch']} | {r['eager_ms']:.2f} | {r['compiled_ms']:.2f} "
            f"| {r['eager_ms'] / r['compiled_ms']:.2f}x | {compile_s} | {r['diff']:.1e} |"
        )
        if static:
            line += f" {r['static_ms']:.2f} | {r['static_compile_s']:.1f} |"
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="digits,mnist,dit")
    p.add_argument("--batches", default="1,8", help="images per request")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared 2-core machine)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=5, help="calls per round")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--static", action="store_true", help="also a static compile per batch size")
    p.add_argument("--cache-dir", type=Path, default=None, help="the inductor cache (default: a fresh, cold one)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cache_dir = a.cache_dir or Path(tempfile.mkdtemp(prefix="inductor-"))
    state = "warm" if cache_dir.is_dir() and any(cache_dir.iterdir()) else "cold"
    use_inductor_cache(cache_dir)
    rows = engine_rows(
        a.models.split(","),
        [int(b) for b in a.batches.split(",")],
        a.device,
        a.backend,
        a.rounds,
        a.calls,
        a.static,
        cache_dir=cache_dir,
    )
    where = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"CPU, {a.threads} thread(s)"
    print(f"\nThe compiled engine on {where}, torch {torch.__version__}, {a.backend}; inductor cache {state}")
    print(f"median of {a.rounds} alternating rounds of {a.calls} calls\n")
    print_table(rows, a.static)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
