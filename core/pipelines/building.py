"""One lock for building torch modules in a worker process.

diffusers' ``from_pretrained`` and ``from_single_file`` build a model inside accelerate's ``init_empty_weights``, which
swaps ``torch.nn.Module.register_parameter`` for the whole process while it runs: a module another thread builds
meanwhile gets its parameters on the meta device, and two such loads overlapping in two threads put back each other's
swap in the wrong order and leave it in place for good (every module built after that, in any thread, is empty, and
every load fails until the process restarts). An embedded gateway runs inference and training on two threads, a
worker started with ``--pool threads`` several: every model load, every construction of a network and every adapter
injection (LoRA layers, fused projections) in the service holds this lock. Reentrant: a load may build its parts
under it."""

from __future__ import annotations

import threading

BUILDING = threading.RLock()
