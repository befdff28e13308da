"""One lock for building torch modules in a worker process (its loads, network constructions, adapter injections and
compiled calls).

diffusers' ``from_pretrained`` and ``from_single_file`` build a model inside accelerate's ``init_empty_weights``, which
swaps ``torch.nn.Module.register_parameter`` for the whole process while it runs: a module another thread builds
meanwhile gets its parameters on the meta device, and two such loads overlapping in two threads put back each other's
swap in the wrong order and leave it in place for good (every module built after that, in any thread, is empty, and
every load fails until the process restarts). A trace of ``torch.compile`` builds modules too (GraphModules), and a
compiled network traces again whenever it meets a new shape. An embedded gateway runs inference, training and its
warm-up on separate threads: every model load, every construction of a network, every injection of adapter layers or
fused projections, every call of a compiled network and every engine run (its noise is drawn in torch's default dtype,
which a half-precision load changes for the whole process while it runs) in the service holds this lock. Reentrant: a
load may build its parts under it. (A Celery worker runs one job at a time: ``worker/app.py`` refuses a pool that would
run several in one process, since jobs there also share each pipeline's active adapters.)"""

from __future__ import annotations

import contextlib
import threading

BUILDING = threading.RLock()


def building_while(compiled: bool) -> contextlib.AbstractContextManager:
    """BUILDING around a call of a network that is ``compiled`` (it may trace again); nothing for an eager one."""
    return BUILDING if compiled else contextlib.nullcontext()
