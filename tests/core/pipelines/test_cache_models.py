"""MAX_WARM_MODELS: the cache holds at most that many models (engine or pipeline), least recently used out first,
beside its memory budget; ControlNets and preprocessors are not counted."""

from __future__ import annotations

from core.pipelines.cache import PipelineCache


def test_the_cache_holds_at_most_max_models_and_reports_them():
    loads = []
    cache = PipelineCache(1 << 40, on_load=lambda key, ms: loads.append(key[1]), max_models=2)
    for kind, name in [("engine", "digits"), ("pipeline", "sd"), ("controlnet", "canny")]:
        cache.get((kind, name, "v1"), object)
    assert cache.models() == {"digits", "sd"}
    cache.get(("engine", "digits", "v1"), object)  # used: sd is now the least recently used model
    cache.get(("engine", "mnist", "v1"), object)
    assert cache.models() == {"digits", "mnist"} and ("controlnet", "canny", "v1") in cache.keys()
    assert loads == ["digits", "sd", "canny", "mnist"] and cache.evictions == 1


def test_the_model_with_the_least_queued_demand_goes_first():
    demand = {"digits": 5, "sd": 0}
    cache = PipelineCache(1 << 40, max_models=2, demand=lambda model: demand.get(model, 0))
    cache.get(("engine", "digits", "v1"), object)  # the least recently used, but five jobs wait for it
    cache.get(("pipeline", "sd", "v1"), object)
    cache.get(("engine", "mnist", "v1"), object)
    assert cache.models() == {"digits", "mnist"}
    demand.update(digits=0, mnist=3)
    cache.get(("pipeline", "sd", "v1"), object)  # now digits waits for nothing: it goes
    assert cache.models() == {"mnist", "sd"}
