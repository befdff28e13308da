"""Which weights a job runs: a job admitted for a served model runs that entry without asking the store for a
tenant's model of the same name (one round trip less on every job's way to the device); any other job asks, as
before, and a tenant's own model wins there."""

from __future__ import annotations

from core.registry import ModelRegistry
from core.runner import Engines
from core.schemas import ModelRef
from tests.conftest import REPO


class Ctx:
    """A run context that counts the store reads for the tenant's registered models."""

    tenant = "acme"

    def __init__(self):
        self.asked: list[str] = []

    def registration(self, kind, name):
        self.asked.append(name)
        return None


def test_a_job_admitted_for_the_served_model_runs_it_without_a_read(tmp_path):
    registry = ModelRegistry([REPO / "models"])
    engines = Engines(registry, device="cpu", torch_threads=1, cache_dir=tmp_path)
    served = registry.get("digits")
    assert served.version  # what admission records as the job's model.sha256
    ctx = Ctx()
    assert engines.resolve("digits", ctx, ModelRef(id="digits", sha256=served.version)) is served
    assert ctx.asked == []
    # admitted for other weights (the tenant's own model of that name, or the served one since replaced): asked
    assert engines.resolve("digits", ctx, ModelRef(id="digits", sha256="0" * 64)) is served
    assert engines.resolve("digits", ctx, None) is served  # a record from before: asked
    assert engines.resolve("digits", ctx, ModelRef(id="mnist", sha256=served.version)) is served  # another id
    assert ctx.asked == ["digits", "digits", "digits"]
