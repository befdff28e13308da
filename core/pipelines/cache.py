"""A warm LRU of pipelines and engine models with a memory budget (RAM on CPU, VRAM on CUDA).

Entries are keyed by model id and version; task variants (img2img, inpaint, ControlNet) are built from the
cached components with ``from_pipe``, so no second copy of the weights is ever loaded. Evicting drops every
reference, collects, returns freed CUDA blocks and trims the C heap, so the memory really goes back.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import torch

from core.pipelines.building import BUILDING

log = logging.getLogger("diffuserve.pipelines")


def module_bytes(obj) -> int:
    """Bytes of parameters and buffers held by a pipeline's torch modules (shared tensors counted once)."""
    seen, total = set(), 0
    comps = getattr(obj, "components", None) or {"m": obj}
    for comp in comps.values():
        if isinstance(comp, torch.nn.Module):
            for t in list(comp.parameters()) + list(comp.buffers()):
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
    return total


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # give freed heap pages back to the OS (glibc)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


MODEL_KINDS = ("engine", "pipeline")  # cache keys that are models; the others (ControlNets, preprocessors) go along


class PipelineCache:
    def __init__(
        self,
        budget_bytes: int,
        on_load: Callable[[tuple, float], None] | None = None,
        max_models: int | None = None,
        demand: Callable[[str], float] | None = None,
    ):
        self.budget_bytes = budget_bytes
        self.demand = demand  # queued jobs per model id: a model still in demand is evicted last
        self.max_models = max_models  # MAX_WARM_MODELS: models (engine or pipeline) held at once, beside the budget
        self.on_load = on_load  # (key, load_ms) after every cold load, warm-ups included
        self._items: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._lock = threading.RLock()
        self.evictions = 0

    def used_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._items.values())

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._items)

    def models(self) -> set[str]:
        """The ids of the models held warm (what the scheduler routes by)."""
        with self._lock:
            return {k[1] for k in self._items if k[0] in MODEL_KINDS}

    def _over(self) -> bool:
        if self.used_bytes() > self.budget_bytes:
            return True
        held = sum(1 for k in self._items if k[0] in MODEL_KINDS)
        return self.max_models is not None and held > self.max_models

    def get(self, key: tuple, load: Callable[[], object]) -> tuple[object, float]:
        """Return (item, load_ms); load_ms is 0 on a warm hit, and the time waited when another thread (a warm-up)
        was loading it: a job that waits for a model counts the wait as its load."""
        t0 = time.perf_counter()
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                waited_ms = (time.perf_counter() - t0) * 1000
                return self._items[key][0], round(waited_ms, 3) if waited_ms >= 1 else 0.0
            with BUILDING:
                item = load()
            size = module_bytes(item)
            self._items[key] = (item, size)
            self._evict(keep=key)
            load_ms = (time.perf_counter() - t0) * 1000
        if self.on_load is not None:
            self.on_load(key, load_ms)
        return item, load_ms

    def _evict(self, keep: tuple) -> None:
        evicted = False
        while self._over() and len(self._items) > 1:
            over_budget = self.used_bytes() > self.budget_bytes  # else over MAX_WARM_MODELS: a model goes
            old = self._victim(keep, over_budget)
            self._items.pop(old)
            self.evictions += 1
            evicted = True
            log.info("evicted %s from the pipeline cache", old)
        if evicted:
            release_memory()

    def _victim(self, keep: tuple, over_budget: bool) -> tuple:
        """What goes: the least recently used, except that among models the one with the least queued demand goes
        first (the eviction that costs least: the jobs waiting for the others need no reload)."""
        candidates = [k for k in self._items if k != keep and (over_budget or k[0] in MODEL_KINDS)]
        if self.demand is None:
            return candidates[0]
        try:
            wanted = {k[1]: self.demand(k[1]) for k in candidates if k[0] in MODEL_KINDS}
        except Exception:  # noqa: BLE001 - demand is a hint: without it, least recently used
            return candidates[0]
        return min(candidates, key=lambda k: wanted.get(k[1], 0.0) if k[0] in MODEL_KINDS else 0.0)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
        release_memory()
