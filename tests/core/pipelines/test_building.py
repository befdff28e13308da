"""Loads and module construction in two threads at once (an embedded gateway's inference and training threads).

diffusers loads inside accelerate's ``init_empty_weights``, which swaps ``torch.nn.Module.register_parameter`` for
the whole process while it runs; two loads overlapping in two threads put the swaps back in the wrong order and left
one in place for good, and a module built in one thread while another loaded got its parameters on the meta device.
Each of the service's building paths runs here beside the LoRA trainer's load of its base (itself a locked path)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch

from core.pipelines.cache import PipelineCache
from core.registry import ModelRegistry
from core.schemas import LoraTrainingRequest
from core.training import ddpm_job, lora_job
from core.warm import Warm


def _thread(fn, errors: list[BaseException]) -> threading.Thread:
    """A thread running ``fn`` that keeps what it raised in ``errors`` (reported by the test, not lost)."""

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    return threading.Thread(target=run)


def _meta(*modules: torch.nn.Module) -> bool:
    return any(p.device.type == "meta" for m in modules for p in m.parameters())


def _cache_load(entry, registry):  # as Pipelines.base loads: from_pretrained inside the cache's get
    import diffusers

    unet, _ = PipelineCache(budget_bytes=1 << 40).get(
        ("pipeline", "m", "v"), lambda: diffusers.UNet2DConditionModel.from_pretrained(entry.source, subfolder="unet")
    )
    return [unet]


def _lora_injection(entry, registry):  # a LoRA job on a pipeline loaded a moment before: the adapter's layers built
    warm = Warm(registry, device="cpu")
    base, _ = warm.pipelines.base(entry)
    ctx = SimpleNamespace(registered=lambda *a: None, registration=lambda *a: None, tenant="t")
    warm.pipelines.apply_loras(entry, base, [SimpleNamespace(name="ink", scale=1.0)], ctx)
    assert "g_ink" in "".join(base.get_active_adapters())
    return [base.unet]


def _engine_network(entry, registry):  # the engine trainer's fresh U-Net
    return [ddpm_job.new_network(16, 1, ["a", "b"])]


@pytest.mark.parametrize("build", [_cache_load, _lora_injection, _engine_network], ids=lambda f: f.__name__[1:])
def test_a_build_beside_a_training_load_leaves_no_module_empty(build, tiny_models_dir, dropped_loras):
    registry = ModelRegistry([tiny_models_dir, dropped_loras])
    entry = registry.get("tiny-sd")
    req = LoraTrainingRequest(base_model="tiny-sd", name="x", dataset="upl_" + "1" * 32, rank=4, resolution=32, seed=0)
    original = torch.nn.Module.register_parameter
    until = time.monotonic() + 3
    counts = {"build": 0, "training": 0}
    empty: list[str] = []
    errors: list[BaseException] = []

    def beside() -> None:
        while time.monotonic() < until:
            empty.extend(["build"] if _meta(*build(entry, registry)) else [])
            counts["build"] += 1

    def training() -> None:  # the LoRA trainer's private copy of its base, with fresh adapters
        while time.monotonic() < until:
            t = lora_job.frozen_base_with_adapters(entry, req, "cpu")
            empty.extend(["training"] if _meta(t.unet, t.vae, t.text_encoder) else [])
            counts["training"] += 1

    threads = [_thread(f, errors) for f in (beside, training)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors, errors
        assert counts["build"] >= 2 and counts["training"] >= 2, counts
        assert not empty, f"modules built on the meta device: {empty[:5]} ({len(empty)})"
        assert torch.nn.Module.register_parameter is original  # no swap left behind
        assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
    finally:
        torch.nn.Module.register_parameter = original  # a failure here must not empty every later test's modules


def test_a_pipeline_loaded_again_after_an_eviction_takes_its_loras_again(tiny_models_dir, dropped_loras):
    """The adapters a pipeline holds are its own: after the cache evicted it and loaded it again, a LoRA it held
    before loads again (the loader's list outlived the pipeline: every later job with that LoRA failed)."""
    registry = ModelRegistry([tiny_models_dir, dropped_loras])
    entry, other = registry.get("tiny-sd"), registry.get("tiny-sdxl")
    warm = Warm(registry, device="cpu", max_models=1)
    ctx = SimpleNamespace(registered=lambda *a: None, registration=lambda *a: None, tenant="t")
    ink = [SimpleNamespace(name="ink", scale=1.0)]

    def draw(base) -> torch.Tensor:
        return base("a cat", num_inference_steps=2, height=32, width=32, output_type="pt",
                    generator=torch.Generator().manual_seed(1)).images  # fmt: skip

    first, _ = warm.pipelines.base(entry)
    first.set_progress_bar_config(disable=True)
    warm.pipelines.apply_loras(entry, first, ink, ctx)
    with torch.inference_mode():
        before = draw(first)
    warm.pipelines.base(other)  # one model at a time: tiny-sd goes
    again, load_ms = warm.pipelines.base(entry)
    assert again is not first and load_ms > 0
    again.set_progress_bar_config(disable=True)
    warm.pipelines.apply_loras(entry, again, ink, ctx)
    with torch.inference_mode():
        assert torch.allclose(draw(again), before, atol=1e-5)  # the same LoRA drawn the same


def _engine_run(engines, tiny_models_dir, ctx):
    from core.executors import engine_txt2img
    from core.schemas import Txt2ImgRequest

    entry = engines.registry.get("digits")
    engines.warm.load_engine(entry)  # loaded before: a wait is the run's, not the load's
    request = Txt2ImgRequest(model="digits", prompt="7", num_inference_steps=3, seed=1)
    return lambda: engine_txt2img.run(request, entry, ctx, engines.warm)


def _compiled_call(engines, tiny_models_dir, ctx):
    import diffusers

    from core.pipelines.fastpath import FastPath
    from core.pipelines.loader import denoise
    from core.schemas import Txt2ImgRequest

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_models_dir / "tiny-sd")
    request = Txt2ImgRequest(model="tiny-sd", prompt="a cat", width=32, height=32, num_inference_steps=2, seed=1,
                              guidance_scale=5.0)  # fmt: skip
    return lambda: denoise(pipe, request, ctx, FastPath(compile=True), output_type="np")  # a new shape may trace


@pytest.mark.parametrize("call", [_engine_run, _compiled_call], ids=lambda f: f.__name__[1:])
def test_a_run_that_may_build_waits_while_another_thread_builds(call, engines, tiny_models_dir):
    """An engine run (a compiled one traces at a new size; its noise is drawn in the default dtype a half-precision
    load changes) and a compiled pipeline call hold the building lock: started while another thread holds it, the
    first step comes after that thread lets go."""
    from core.pipelines.building import BUILDING
    from tests.core.executors.conftest import Ctx

    steps: list[float] = []

    class Timed(Ctx):
        def progress(self, step, total, **extra):
            steps.append(time.monotonic())
            super().progress(step, total)

    run = call(engines, tiny_models_dir, Timed())
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with BUILDING:
            held.set()
            release.wait(60)

    h = threading.Thread(target=holder)
    h.start()
    assert held.wait(10)
    failed: list[BaseException] = []
    job = _thread(run, failed)
    job.start()
    job.join(timeout=1.0)  # the run alone takes some 100 ms: unlocked, its steps would be done by now
    released_at = time.monotonic()
    release.set()
    job.join(timeout=60)
    h.join(timeout=10)
    assert not failed, failed
    assert not job.is_alive() and steps, "the run did not finish"
    assert steps[0] >= released_at, f"a step ran {released_at - steps[0]:.3f} s before the lock was let go"
