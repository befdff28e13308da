"""The compiled engine: ``torch.compile`` of an engine model's network (the U-Net or the DiT), and the warm-up that
compiles it before the first request.

What is compiled: the network module in place (``nn.Module.compile``): calling it runs the compiled ``forward``,
while the module stays itself (its class, ``config``, ``state_dict`` and every other method). A method other than
``forward`` called directly (e.g. a split forward for step caching) runs eagerly.

Shapes (``bench/compile.py`` measured the choice): the warm-up draws batch 1, a static graph of its own, and then
batches 2 and 16 with the batch dimension marked dynamic: one graph for batches 2 to 15 and one for 16 and more
(on a CPU the convolution picks its kernel by batch size, a guard in the graph; on CUDA the second is not needed and
16 reuses the first). Three compiles cover all that a worker meets (one image; classifier-free guidance doubling the
batch; several images; jobs batched together), where static shapes would compile once per batch size, in the
request that first meets it. A U-Net asked for another size than
its native one compiles that size on its first request (dynamo then makes height and width dynamic as well); a DiT
draws at its native size only.

The inductor cache lives in ``cache_dir`` (``TORCHINDUCTOR_CACHE_DIR``, as for the diffusers fast path), so a
restarted worker loads the compiled kernels instead of compiling them again: on a 2-core CPU a cold compile of a
bundled U-Net takes minutes, a warm one seconds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("diffuserve.engine")

COMPILED_ATTR = "_diffuserve_compiled"
# batch 1 (static), then a dynamic batch: its graph holds 2-15 on a CPU, where the convolution picks its kernel
# (mkldnn) by batch size from 16 on, a guard of the graph; 16 compiles the one for 16 and more (on CUDA, 2 holds all)
WARM_UP_BATCHES = (1, 2, 16)


def use_inductor_cache(cache_dir: str | Path | None) -> None:
    """Keep compiled kernels across restarts (the process's first cache dir wins: inductor reads it once)."""
    if cache_dir is None:
        return
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def compile_network(
    net: nn.Module,
    backend: str | Callable = "inductor",
    cuda_graphs: bool = False,
    cache_dir: str | Path | None = None,
) -> str:
    """Compile ``net`` (a U-Net or DiT) in place for inference; returns what was done, for the job's ``versions``
    (``"inductor"``, ``"inductor+cuda_graphs"``). Compiling happens at the first call of each shape: see
    :func:`warm_up`. ``cuda_graphs`` (CUDA only): ``mode="reduce-overhead"``, one graph captured per batch size.
    ``backend``: a name (``inductor``; ``eager`` or ``aot_eager`` to debug) or a backend callable (tests)."""
    if backend == "inductor":
        use_inductor_cache(cache_dir)
    cuda_graphs = cuda_graphs and next(net.parameters()).device.type == "cuda"
    net.eval().requires_grad_(False)  # served, never trained: no autograd state, nor guards on it
    # fullgraph: a graph break would leave part of every step eager without a word
    net.compile(backend=backend, fullgraph=True, mode="reduce-overhead" if cuda_graphs else None)
    name = backend if isinstance(backend, str) else type(backend).__name__
    label = name + ("+cuda_graphs" if cuda_graphs else "")
    setattr(net, COMPILED_ATTR, label)
    return label


def compiled(net: nn.Module) -> str | None:
    """How ``net`` was compiled (``compile_network``'s label), or None when it runs eagerly."""
    return getattr(net, COMPILED_ATTR, None)


def warm_up_inputs(
    net: nn.Module, batch: int, size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x, t, y) as the samplers pass them: x (B, C, size, size) in the network's dtype, t (B,) float32 timesteps,
    y (B,) long labels for a class-conditional network, else None."""
    cfg = net.config
    p = next(net.parameters())
    size = size or cfg.sample_size
    x = torch.zeros(batch, cfg.in_channels, size, size, device=p.device, dtype=p.dtype)
    t = torch.full((batch,), 500.0, device=p.device)
    y = torch.zeros(batch, dtype=torch.long, device=p.device) if cfg.num_classes else None
    return x, t, y


def warm_up(net: nn.Module, size: int | None = None, batch_sizes: tuple[int, ...] = WARM_UP_BATCHES) -> float:
    """Run a compiled ``net`` at ``size`` (default: native) on each of ``batch_sizes``, the batch dimension marked
    dynamic from 2 on, so that no request pays a compile. Returns the seconds it took (0 for an eager network)."""
    if compiled(net) is None:
        return 0.0
    t0 = time.perf_counter()
    with torch.no_grad():  # as the samplers run it: grad mode is part of the graph's guards
        for b in batch_sizes:
            inputs = warm_up_inputs(net, b, size)
            if b >= 2:
                for tensor in inputs:
                    if tensor is not None:
                        torch._dynamo.mark_dynamic(tensor, 0)
            net(*inputs)
    if next(net.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    log.debug("compiled %s (%s) in %.1f s", type(net).__name__, compiled(net), seconds)
    return seconds
