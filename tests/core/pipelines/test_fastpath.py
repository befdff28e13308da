"""The fast path changes speed, not pictures: each step's output equals the plain pipeline's within float tolerance
(here on the CPU in fp32; on a GPU the same steps run in half precision, ``test_cuda.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.pipelines import fastpath
from core.pipelines.cache import PipelineCache
from core.pipelines.fastpath import FastPath
from core.pipelines.loader import Pipelines
from core.registry import ModelRegistry
from core.schemas import LoraRef


class NoTenantModels:
    tenant = "t"

    def registered(self, kind, name):
        return None


def draw(pipelines: Pipelines, registry, loras=(), n=1, size=32):
    entry = registry.get("tiny-sd")
    base, _ = pipelines.base(entry)
    pipelines.apply_loras(entry, base, [LoraRef(name=name, scale=0.8) for name in loras], NoTenantModels())
    fastpath.per_call(base, pipelines.fast, size, size, n)
    generators = [torch.Generator("cpu").manual_seed(7 + i) for i in range(n)]
    with torch.inference_mode():
        out = base(
            ["a red cat"] * n, num_inference_steps=3, height=size, width=size, generator=generators, output_type="np"
        )
    return out.images, base


@pytest.fixture(scope="module")
def registry(tiny_models_dir, dropped_loras):
    return ModelRegistry([tiny_models_dir, dropped_loras])


@pytest.fixture(scope="module")
def plain(registry):
    return Pipelines(registry, "cpu", PipelineCache(10**10), FastPath())


def test_channels_last_and_fused_qkv_leave_the_image_as_it_was(registry, plain):
    fast = Pipelines(registry, "cpu", PipelineCache(10**10), FastPath(channels_last=True, fuse_qkv=True))
    reference, _ = draw(plain, registry)
    image, base = draw(fast, registry)
    # the steps did happen: a fused projection in every attention, the convolutions in channels_last
    processors = {type(p).__name__ for p in base.unet.attn_processors.values()}
    assert processors == {"FusedAttnProcessor2_0"}, processors
    assert base.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(image - reference).max() < 1e-4
    assert np.abs(reference).sum() > 0


def test_a_lora_unfuses_and_applies_and_none_fuses_again(registry, plain):
    fast = Pipelines(registry, "cpu", PipelineCache(10**10), FastPath(fuse_qkv=True))
    with_ink, _ = draw(plain, registry, loras=("ink",))
    without, _ = draw(plain, registry)
    assert np.abs(with_ink - without).max() > 0.01  # the adapter changes the picture
    image, base = draw(fast, registry, loras=("ink",))
    assert np.abs(image - with_ink).max() < 1e-4  # adapters sit on the separate projections: unfused for them
    assert {type(p).__name__ for p in base.unet.attn_processors.values()} != {"FusedAttnProcessor2_0"}
    image, base = draw(fast, registry)
    assert np.abs(image - without).max() < 1e-4
    assert {type(p).__name__ for p in base.unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}


def test_vae_slicing_for_several_images_and_tiling_above_the_size(registry, plain):
    together, base = draw(plain, registry, n=3)
    assert base.vae.use_slicing and not base.vae.use_tiling
    alone = [draw(plain, registry, n=1)[0][0]]
    assert not base.vae.use_slicing
    assert np.abs(together[0] - alone[0]).max() < 1e-4
    tiled = Pipelines(registry, "cpu", PipelineCache(10**10), FastPath(vae_tiling_above_px=16 * 16))
    _, base = draw(tiled, registry, size=32)
    assert base.vae.use_tiling


def test_compiled_denoiser_gives_the_same_image_and_a_lora_swap_does_not_recompile(registry, plain):
    """Regional compile through dynamo (the ``aot_eager`` backend keeps this fast on a CPU; the inductor path is
    the same call with another backend, measured by ``bench/gpu.py``)."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled = Pipelines(
        registry, "cpu", PipelineCache(10**10), FastPath(compile=True, compile_backend="aot_eager", lora_max_rank=8)
    )
    reference, _ = draw(plain, registry)
    with_ink, _ = draw(plain, registry, loras=("ink",))
    with_neon, _ = draw(plain, registry, loras=("neon",))
    image, base = draw(compiled, registry)
    assert np.abs(image - reference).max() < 1e-4
    assert any(getattr(m, "_compiled_call_impl", None) is not None for m in base.unet.modules())  # in place
    image, _ = draw(compiled, registry, loras=("ink",))  # the first adapter: slot0 created (one recompile)
    assert np.abs(image - with_ink).max() < 1e-3
    with torch._dynamo.config.patch(error_on_recompile=True):
        image, _ = draw(compiled, registry, loras=("neon",))  # swapped in place: no recompile
        assert np.abs(image - with_neon).max() < 1e-3
        image, _ = draw(compiled, registry)  # no LoRA: the slot at scale 0
        assert np.abs(image - reference).max() < 1e-3


def test_defaults_per_device():
    assert FastPath.for_device("cpu").describe() == "sdpa"
    gpu = FastPath.for_device("cuda")
    assert gpu.channels_last and gpu.fuse_qkv and not gpu.compile
    compiled = FastPath.for_device("cuda", compile=True, cuda_graphs=True)
    assert not compiled.fuse_qkv and compiled.describe() == "sdpa,channels_last,compile:cuda_graphs"
    assert not FastPath.for_device("cuda", enabled=False).channels_last
