"""Loads and module construction in two threads at once (an embedded gateway's inference and training threads).

diffusers loads inside accelerate's ``init_empty_weights``, which swaps ``torch.nn.Module.register_parameter`` for
the whole process while it runs; two loads overlapping in two threads put the swaps back in the wrong order and left
one in place for good: every module built after that, in any thread, had its parameters on the meta device."""

from __future__ import annotations

import threading
import time

import torch

from core.pipelines.cache import PipelineCache
from core.schemas import LoraTrainingRequest
from core.training import lora_job


def _meta(module: torch.nn.Module) -> bool:
    return any(p.device.type == "meta" for p in module.parameters())


def test_an_inference_load_beside_a_training_load_leaves_no_module_empty(engines):
    import diffusers

    entry = engines.registry.get("tiny-sd")
    req = LoraTrainingRequest(base_model="tiny-sd", name="x", dataset="upl_" + "1" * 32, rank=4, resolution=32, seed=0)
    original = torch.nn.Module.register_parameter
    until = time.monotonic() + 3
    counts = {"inference": 0, "training": 0}
    empty: list[str] = []
    errors: list[BaseException] = []

    def inference() -> None:  # as loader.py loads a pipeline's parts: from_pretrained inside the cache's get
        i = 0
        while time.monotonic() < until:
            cache = PipelineCache(budget_bytes=1 << 40)
            unet, _ = cache.get(("pipeline", f"m{i}", "v"), lambda: diffusers.UNet2DConditionModel.from_pretrained(
                entry.source, subfolder="unet"))  # fmt: skip
            empty.extend(["inference"] if _meta(unet) else [])
            counts["inference"] += 1
            i += 1

    def training() -> None:  # the LoRA trainer's private copy of its base, with fresh adapters
        while time.monotonic() < until:
            t = lora_job.frozen_base_with_adapters(entry, req, "cpu")
            empty.extend(["training"] if any(_meta(m) for m in (t.unet, t.vae, t.text_encoder)) else [])
            counts["training"] += 1

    def guarded(fn):
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        return run

    threads = [threading.Thread(target=guarded(f)) for f in (inference, training)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors, errors
        assert counts["inference"] >= 3 and counts["training"] >= 2, counts
        assert not empty, f"modules built on the meta device: {empty[:5]} ({len(empty)})"
        assert torch.nn.Module.register_parameter is original  # no swap left behind
        assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
    finally:
        torch.nn.Module.register_parameter = original  # a failure here must not empty every later test's modules
