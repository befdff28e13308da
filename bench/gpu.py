"""Denoiser speed on a GPU: full-size architectures built from their public configs with random weights (the FLOPs
are the real ones, no hub needed), timed as plain diffusers, with the service's fast path, and compiled.

    python bench/gpu.py                      # SD 1.5 UNet 512², SDXL UNet 1024², a Flux-class transformer 1024²
    python bench/gpu.py --models sd15 --batches 1,4,8 --iters 20
    python bench/gpu.py --smoke              # tiny configs on the CPU: keeps this script working in the test suite
    python bench/gpu.py --models none --engine digits,mnist,dit   # the engine alone
    python bench/gpu.py --models flux --batches 1 --engine none    # the Flux-class rows and its step caching

One iteration is one denoiser forward for a whole batch: with classifier-free guidance (SD 1.5, SDXL) the batch is
doubled, as a pipeline does; the Flux-class model is guidance-distilled (one pass). images/s is it/s x batch /
--steps (denoiser only; text encoders and the VAE are not timed). MFU is the model FLOPs (counted with
``torch.utils.flop_counter`` on one forward) times it/s over the GPU's dense half-precision peak.

Modes, each on a fresh copy of the weights:
- ``diffusers``: the model in half precision (fp16 UNets, bf16 transformer), diffusers' default SDPA attention;
- ``fast path``: plus what the service does by default on CUDA (``core/pipelines/fastpath.py``): channels_last,
  fused QKV projections;
- ``compiled``: channels_last plus regional ``torch.compile`` of the repeated blocks (``COMPILE=1``), and
  ``compiled+graphs`` with CUDA graphs (``CUDA_GRAPHS=1``); the compile time is reported apart.

The engine (``--engine``, ``core/ddpm``): the bundled models and a DiT of their size in fp32 as a worker serves them,
eager against compiled (``core/ddpm/compile.py``: the network compiled in place and warmed up on batch 1 and the
dynamic batches) and compiled with CUDA graphs, in ms per denoiser step (``bench/compile.py`` prints the CPU table).

Step caching (with ``flux`` among ``--models``): the Flux-class transformer's whole denoising loop through the
service's ``core/pipelines/step_cache.py`` (diffusers' First-Block Cache, TaylorSeer and MagCache hooks), seconds per
image and the fraction of calls reused, random weights (speed only).

The published anchors (H100, SD 1.5 512² batch 1 with CFG: 54.5 it/s diffusers, 66.0 compiled, 104.6 stable-fast;
SDXL 1024²: 14.9 -> 21.6 it/s) are printed beside the results.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.pipelines import fastpath  # noqa: E402
from core.pipelines.fastpath import FastPath  # noqa: E402

ANCHORS = {  # (model, batch) -> published it/s on an H100: (diffusers, compiled, best published)
    ("sd15", 1): "54.5 / 66.0 / 104.6 (stable-fast)",
    ("sdxl", 1): "14.9 / 21.6",
}
PEAK_TFLOPS = {  # dense fp16/bf16 tensor-core peak
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
}

SD15 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
SDXL = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
FLUX = dict(  # FLUX.1-dev's transformer: 19 double-stream and 38 single-stream blocks, 3072 wide
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
TINY_SD = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=16,
)
TINY_SDXL = dict(
    TINY_SD,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,
)
TINY_FLUX = dict(FLUX, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2)
TINY_FLUX.update(joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))


@dataclass
class Case:
    name: str  # sd15, sdxl, flux
    label: str
    config: dict
    size: int  # image side in pixels
    cfg: bool
    text_len: int


def cases(smoke: bool) -> dict[str, Case]:
    if smoke:
        return {
            "sd15": Case("sd15", "SD 1.5 UNet (tiny)", TINY_SD, 64, True, 8),
            "sdxl": Case("sdxl", "SDXL UNet (tiny)", TINY_SDXL, 64, True, 8),
            "flux": Case("flux", "Flux-class transformer (tiny)", TINY_FLUX, 64, False, 8),
        }
    return {
        "sd15": Case("sd15", "SD 1.5 UNet 512²", SD15, 512, True, 77),
        "sdxl": Case("sdxl", "SDXL UNet 1024²", SDXL, 1024, True, 77),
        "flux": Case("flux", "Flux-class transformer 1024²", FLUX, 1024, False, 512),
    }


def build(case: Case, dtype: torch.dtype, device: str) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    torch.manual_seed(0)
    cls = FluxTransformer2DModel if case.name == "flux" else UNet2DConditionModel
    with torch.device(device):
        model = cls(**case.config)
    return model.to(dtype).eval().requires_grad_(False)


def inputs(case: Case, model: torch.nn.Module, batch: int, dtype: torch.dtype, device: str) -> dict:
    """One denoiser call's inputs for ``batch`` images (doubled for classifier-free guidance)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    n = batch * (2 if case.cfg else 1)
    latent = case.size // 8
    if case.name == "flux":
        tokens = (latent // 2) ** 2  # 2x2 patches of the 16-channel latent, packed into 64 channels
        ids = torch.zeros(tokens, 3, device=device)
        ids[:, 1] = torch.arange(tokens, device=device) // (latent // 2)
        ids[:, 2] = torch.arange(tokens, device=device) % (latent // 2)
        c = model.config
        return dict(
            hidden_states=randn(n, tokens, c.in_channels),
            encoder_hidden_states=randn(n, case.text_len, c.joint_attention_dim),
            pooled_projections=randn(n, c.pooled_projection_dim),
            timestep=torch.full((n,), 0.5, device=device, dtype=dtype),
            img_ids=ids,
            txt_ids=torch.zeros(case.text_len, 3, device=device),
            guidance=torch.full((n,), 3.5, device=device, dtype=dtype),
            return_dict=False,
        )
    c = model.config
    kw = dict(
        sample=randn(n, c.in_channels, latent, latent),
        timestep=torch.full((n,), 500, device=device, dtype=torch.long),
        encoder_hidden_states=randn(n, case.text_len, c.cross_attention_dim),
        return_dict=False,
    )
    if c.addition_embed_type == "text_time":
        text_embeds = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": randn(n, text_embeds), "time_ids": randn(n, 6)}
    return kw


class Bare:
    """A one-model stand-in for a pipeline, so the service's own fast-path functions apply to it unchanged."""

    def __init__(self, name: str, model: torch.nn.Module):
        setattr(self, name, model)
        self.components = {name: model}


def apply_mode(case: Case, model: torch.nn.Module, mode: str, backend: str) -> None:
    """The service's own fast-path functions, applied to the bare model."""
    role = "transformer" if case.name == "flux" else "unet"
    pipe = Bare(role, model)
    if mode == "fast path":
        fastpath.prepare(pipe, FastPath(channels_last=role == "unet", fuse_qkv=True))
    elif mode.startswith("compiled"):
        fastpath.prepare(pipe, FastPath(channels_last=role == "unet"))
        fastpath.compile_denoiser(
            pipe, FastPath(compile=True, cuda_graphs=mode.endswith("graphs"), compile_backend=backend)
        )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def flops_per_call(model: torch.nn.Module, kw: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(**kw)
    return float(counter.get_total_flops())


def time_mode(case: Case, base: torch.nn.Module, mode: str, batch: int, a, dtype, device) -> dict:
    model = copy.deepcopy(base)
    apply_mode(case, model, mode, a.compile_backend)
    kw = inputs(case, model, batch, dtype, device)
    if mode != "diffusers" and case.name != "flux" and device.startswith("cuda"):
        kw["sample"] = kw["sample"].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(**kw)[0].float().cpu()  # the first call compiles (compiled modes) or picks kernels
        sync(device)
        first_s = time.perf_counter() - t0
        for _ in range(a.warmup):
            model(**kw)
        sync(device)
        times = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            model(**kw)
            sync(device)
            times.append(time.perf_counter() - t0)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    its = 1.0 / statistics.median(times)
    return {"its": its, "first_s": first_s, "out": out}


def peak_tflops(device: str, override: float | None) -> float | None:
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny configs, fp32 on the CPU, 2 iterations")
    p.add_argument("--models", default="sd15,sdxl,flux")
    p.add_argument("--batches", default=None, help="default 1,4,8 (the Flux-class model: 1)")
    p.add_argument("--modes", default=None, help="default: diffusers,fast path,compiled(,compiled+graphs on CUDA)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="denoising steps per image, for images/s")
    p.add_argument("--compile-backend", default=None, help="default inductor (aot_eager with --smoke)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense fp16 peak, when not in the table")
    p.add_argument("--engine", default=None, help="engine models: default digits,mnist,dit (digits with --smoke)")
    p.add_argument("--engine-batches", default="1,8,32", help="images per request for the engine")
    p.add_argument("--cache-steps", type=int, default=28, help="step caching: denoising steps of the Flux-class loop")
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    if device == "cpu" and not a.smoke:
        print("no CUDA device here: full-size models are for a GPU; --smoke runs the tiny configs on the CPU")
        return 2
    if a.smoke:
        a.iters, a.warmup = min(a.iters, 2), min(a.warmup, 1)
    a.compile_backend = a.compile_backend or ("aot_eager" if a.smoke else "inductor")
    modes = (a.modes or "diffusers,fast path,compiled" + (",compiled+graphs" if device == "cuda" else "")).split(",")
    peak = peak_tflops(device, a.peak_tflops)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke: tiny configs)"
    print(f"\nDenoiser speed on {gpu}, torch {torch.__version__}; {a.iters} timed iterations after {a.warmup} warm-up")
    print("| model | batch | mode | it/s | images/s | MFU | first call s | max diff | published it/s (H100) |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_cases = cases(a.smoke)
    for name in [m for m in a.models.split(",") if m in all_cases]:
        case = all_cases[name]
        dtype = torch.float32 if device == "cpu" else (torch.bfloat16 if name == "flux" else torch.float16)
        try:
            base = build(case, dtype, device)
        except torch.OutOfMemoryError:
            print(f"| {case.label} | - | - | out of memory | | | | | |")
            continue
        batches = [int(b) for b in (a.batches or ("1" if name == "flux" else "1,4,8")).split(",")]
        for batch in batches:
            flops = flops_per_call(base, inputs(case, base, batch, dtype, device))
            reference = None
            for mode in modes:
                try:
                    r = time_mode(case, base, mode, batch, a, dtype, device)
                except torch.OutOfMemoryError:
                    print(f"| {case.label} | {batch} | {mode} | out of memory | | | | | |")
                    torch.cuda.empty_cache()
                    continue
                mfu = f"{flops * r['its'] / (peak * 1e12):.0%}" if peak else "n/a"
                reference = r["out"] if reference is None else reference  # the first mode's output (diffusers)
                diff = (r["out"] - reference).abs().max().item() / max(reference.abs().max().item(), 1e-12)
                anchor = ANCHORS.get((name, batch), "") if mode == "diffusers" else ""
                print(
                    f"| {case.label} | {batch} | {mode} | {r['its']:.2f} | {r['its'] * batch / a.steps:.2f} | {mfu} "
                    f"| {r['first_s']:.1f} | {diff:.1e} | {anchor} |"
                )
        del base
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"\nimages/s = it/s x batch / {a.steps} steps (denoiser only); MFU against {peak or 'n/a'} TFLOPS peak;")
    print("max diff: the largest difference from the first mode's output, relative to its largest value")
    engine_section(a, device)
    if "flux" in a.models.split(","):
        cache_section(a, device, all_cases["flux"])
    return 0


CACHE_SETTINGS = (
    None,
    ("first_block", 0.05),
    ("first_block", 0.1),
    ("first_block", 0.2),
    ("taylorseer", 3),
    ("taylorseer", 5),
    ("mag", 0.06),
)


def cache_section(a, device: str, case: Case) -> None:
    """Step caching on the Flux-class transformer: a whole denoising loop (``--cache-steps`` flow steps, one image,
    as a pipeline calls its transformer) through the service's own ``core.pipelines.step_cache`` (diffusers' hooks),
    in seconds per image and the fraction of denoiser calls reused. Random weights: speed only, no quality."""
    from core.catalog import CACHE_METHODS
    from core.pipelines.step_cache import step_cache
    from core.schemas import StepCache

    steps = 4 if a.smoke else a.cache_steps
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = build(case, dtype, device)
    kw = inputs(case, model, 1, dtype, device)
    pipe = Bare("transformer", model)
    print(f"\nStep caching, {case.label}, {steps} steps, 1 image (random weights: speed and reuse only)")
    print("| setting | s / image | speed-up | calls reused | max diff vs uncached |")
    print("|---|---|---|---|---|")
    base = reference = None
    for setting in CACHE_SETTINGS:
        cache = StepCache(method=setting[0], **{CACHE_METHODS[setting[0]].knob: setting[1]}) if setting else None
        times = []
        for _ in range(1 if a.smoke else 3):
            x = kw["hidden_states"].clone()
            sync(device)
            t0 = time.perf_counter()
            with step_cache(pipe, cache, steps) as counted, torch.inference_mode():
                for i in range(steps):
                    t = torch.full_like(kw["timestep"], 1.0 - i / steps)
                    with model.cache_context("cond"):
                        v = model(**{**kw, "hidden_states": x, "timestep": t})[0]
                    x = x - v / steps
            sync(device)
            times.append(time.perf_counter() - t0)
        spent = min(times)
        base = base or spent
        out = x.float().cpu()
        reference = out if reference is None else reference
        diff = (out - reference).abs().max().item() / max(reference.abs().max().item(), 1e-12)
        name = "uncached" if cache is None else cache.describe()
        reused = counted.reused / counted.calls if counted else 0.0
        print(f"| {name} | {spent:.3f} | {base / spent:.2f}x | {reused:.2f} | {diff:.1e} |")


def engine_section(a, device: str) -> None:
    """The engine's networks, eager against compiled (and compiled with CUDA graphs on CUDA), in ms per step."""
    from bench.compile import engine_rows

    models = [
        m for m in (a.engine or ("digits" if a.smoke else "digits,mnist,dit")).split(",") if m not in ("", "none")
    ]
    if not models:
        return
    batches = [int(b) for b in (a.engine_batches if not a.smoke else "1").split(",")]
    backend = "eager" if a.smoke else a.compile_backend  # --smoke: dynamo's tracing and guards, no kernels
    rounds, calls = (1, 1) if a.smoke else (a.iters, 5)
    print(f"\nThe engine (fp32, {backend}; batch = images x 2 with guidance), ms per denoiser step")
    print("| engine model | images | batch | mode | eager ms | compiled ms | speed-up | compile s | max diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for graphs in [False] + ([True] if device == "cuda" else []):
        for r in engine_rows(models, batches, device, backend, rounds, calls, cuda_graphs=graphs):
            compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "(same)"
            print(
                f"| {r['model']} | {r['images']} | {r['batch']} | {r['how']} | {r['eager_ms']:.3f} "
                f"| {r['compiled_ms']:.3f} | {r['eager_ms'] / r['compiled_ms']:.2f}x | {compile_s} | {r['diff']:.1e} |"
            )


if __name__ == "__main__":
    raise SystemExit(main())
