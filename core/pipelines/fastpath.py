"""The GPU fast path of the diffusers pipelines: what a worker does to a pipeline once when it loads it, and to each
call, to go as fast as the GPU allows without changing outputs beyond half-precision noise.

On by default on CUDA, where each step is lossless (outputs equal within float tolerance, held by
``tests/core/test_fastpath.py``):

1. half precision per family (``loader.pick_dtype``: fp16 for the UNet families, bf16 for the transformer ones);
2. SDPA attention (PyTorch's fused kernels; diffusers' default processor, checked and recorded here);
3. channels_last memory format for the convolutional models (UNet, VAE, ControlNet);
4. fused QKV projections (one matmul instead of three); undone while LoRAs are active, since adapters sit on the
   unfused projections, and redone when a request has none;
5. VAE slicing for a batch of several images, and VAE tiling above ``vae_tiling_above_px`` pixels (tiling blends
   tiles, so it is kept to sizes whose decode would not fit otherwise).

Opt-in (``COMPILE=1``): regional ``torch.compile`` of the repeated blocks (``compile_repeated_blocks``: one block
compiled, reused for all; whole-model compile where a model has no declared blocks), the inductor cache kept in
``DATA_DIR/inductor-cache`` across restarts, CUDA graphs with ``CUDA_GRAPHS=1`` (``mode="reduce-overhead"``: static
shapes, so one capture per size), and LoRA hot-swapping (``enable_lora_hotswap``: adapters load into fixed slots of
``lora_max_rank`` so a swap replaces weights in place and never triggers a recompile).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from core.ddpm.compile import use_inductor_cache  # the engine's: one inductor cache for both

log = logging.getLogger("diffuserve.fastpath")

DENOISERS = ("unet", "transformer")
CONV_MODELS = ("unet", "vae", "controlnet")


@dataclass(frozen=True)
class FastPath:
    channels_last: bool = False
    fuse_qkv: bool = False
    vae_tiling_above_px: int = 2048 * 2048
    compile: bool = False
    cuda_graphs: bool = False
    compile_backend: str = "inductor"
    lora_max_rank: int = 64
    cache_dir: Path | None = None

    @classmethod
    def for_device(
        cls,
        device: str,
        enabled: bool = True,
        compile: bool = False,
        cuda_graphs: bool = False,
        vae_tiling_above_px: int = 2048 * 2048,
        lora_max_rank: int = 64,
        cache_dir: Path | None = None,
        compile_backend: str = "inductor",
    ) -> FastPath:
        """The lossless steps on by default on CUDA (on a CPU channels_last and fused QKV gain nothing measurable);
        compilation only when asked."""
        gpu = device.startswith("cuda") and enabled
        return cls(
            channels_last=gpu,
            fuse_qkv=gpu and not compile,  # compiled: inductor fuses, and toggling it for LoRAs would recompile
            vae_tiling_above_px=vae_tiling_above_px,
            compile=compile,
            cuda_graphs=cuda_graphs and compile is not False,  # unset: an engine model may compile by its own config
            compile_backend=compile_backend,
            lora_max_rank=lora_max_rank,
            cache_dir=cache_dir,
        )

    def describe(self) -> str:
        """What is on, for the job's record (``versions.fast_path``)."""
        on = ["sdpa"] if hasattr(torch.nn.functional, "scaled_dot_product_attention") else []
        on += [name for name, flag in (("channels_last", self.channels_last), ("fused_qkv", self.fuse_qkv)) if flag]
        if self.compile:
            on.append("compile:" + ("cuda_graphs" if self.cuda_graphs else self.compile_backend))
        return ",".join(on) or "off"


# -- once, when a pipeline loads ---------------------------------------------------------------------


def prepare(pipe, fp: FastPath) -> None:
    """Steps 2-4 and the compile, applied to a freshly loaded base pipeline."""
    # 1. (dtype: at from_pretrained) 2. SDPA: diffusers' default processors already call it; nothing to switch
    for component in pipe.components.values():  # served, never trained: no autograd state (nor guards on it)
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
    # 3. channels_last for the convolutional models
    if fp.channels_last:
        for name in CONV_MODELS:
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                module.to(memory_format=torch.channels_last)
    # 4. fused QKV projections of the denoiser
    if fp.fuse_qkv:
        fuse(pipe)
    # 5. compile: LoRA slots first (hotswap needs them before the graph exists), then the repeated blocks
    if fp.compile:
        if hasattr(pipe, "enable_lora_hotswap"):
            pipe.enable_lora_hotswap(target_rank=fp.lora_max_rank)
        compile_denoiser(pipe, fp)


def fuse(pipe) -> bool:
    """Fuse the denoiser's QKV projections; True when they are fused now."""
    model = denoiser(pipe)
    if model is None or not hasattr(model, "fuse_qkv_projections"):
        return False
    if not getattr(model, "_diffuserve_fused", False):
        model.fuse_qkv_projections()
        model._diffuserve_fused = True
    return True


def unfuse(pipe) -> None:
    """Back to separate Q, K and V projections (what LoRA adapters attach to)."""
    model = denoiser(pipe)
    if model is not None and getattr(model, "_diffuserve_fused", False):
        model.unfuse_qkv_projections()
        model._diffuserve_fused = False


def denoiser(pipe):
    for name in DENOISERS:
        model = getattr(pipe, name, None)
        if isinstance(model, torch.nn.Module):
            return model
    return None


def compile_denoiser(pipe, fp: FastPath) -> None:
    """Regional compile: one compiled graph for the block every layer repeats (seconds to compile, not minutes)."""
    use_inductor_cache(fp.cache_dir)
    model = denoiser(pipe)
    if model is None:
        return
    kwargs: dict = {"fullgraph": True, "backend": fp.compile_backend}
    if fp.cuda_graphs:
        kwargs["mode"] = "reduce-overhead"
    if getattr(model, "_repeated_blocks", None) and hasattr(model, "compile_repeated_blocks"):
        model.compile_repeated_blocks(**kwargs)
    else:
        model.compile(**kwargs)
    log.info("compiled %s (%s)", type(model).__name__, kwargs)


# -- each call ----------------------------------------------------------------------------------------


def per_call(pipe, fp: FastPath, height: int | None, width: int | None, images: int) -> None:
    """Step 5: VAE slicing for several images (decoded one at a time: identical output, less peak memory), tiling
    only above the size where the whole decode would not fit."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return
    if hasattr(vae, "enable_slicing"):
        vae.enable_slicing() if images > 1 else vae.disable_slicing()
    if hasattr(vae, "enable_tiling") and height and width:
        vae.enable_tiling() if height * width > fp.vae_tiling_above_px else vae.disable_tiling()
