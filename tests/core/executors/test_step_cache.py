"""Step caching on diffusers transformer pipelines (diffusers' hooks, for one call) and on the engine, through the
executors: a cache that reuses nothing draws the uncached pixels, a cache reuses calls and changes pixels only a
little, the same settings draw the same pixels, the job records what the cache did, and no hook outlives its
request (the next uncached request draws what it drew before)."""

from __future__ import annotations

import numpy as np
import pytest

from core.executors import engine_txt2img, txt2img, video
from core.schemas import StepCache, Txt2ImgRequest, VideoRequest
from tests.core.executors.conftest import Ctx, decode


def flux(engines, cache: StepCache | None = None):
    r = Txt2ImgRequest(model="tiny-flux", prompt="a red house", width=64, height=64, num_inference_steps=8,
                       guidance_scale=3.5, scheduler="euler", seed=1, cache=cache)  # fmt: skip
    result = txt2img.run(r, engines.registry.get("tiny-flux"), Ctx(), engines.warm)
    return decode(result.artifacts[0]), result.versions


@pytest.mark.parametrize(
    "cache",
    [
        StepCache(method="first_block", threshold=0.0),
        StepCache(method="taylorseer", interval=1),
        StepCache(method="mag", threshold=0.0),
    ],  # fmt: skip
)
def test_a_cache_that_reuses_nothing_draws_the_uncached_pixels(engines, cache):
    plain, _ = flux(engines)
    cached, versions = flux(engines, cache)
    assert np.array_equal(plain, cached)
    assert "reused 0 of 8 denoiser calls" in versions["step_cache"]


@pytest.mark.parametrize("cache", [StepCache(method="taylorseer", interval=3), StepCache(method="mag", threshold=0.5)])
def test_a_cache_reuses_calls_reproducibly_and_leaves_no_hook_behind(engines, cache):
    plain, _ = flux(engines)
    a, versions = flux(engines, cache)
    b, _ = flux(engines, cache)
    assert np.array_equal(a, b)  # the same seed and settings: the same pixels
    reused = int(versions["step_cache"].split("reused ")[1].split(" of")[0])
    assert reused >= 2, versions["step_cache"]
    assert versions["step_cache"].startswith(cache.describe())
    assert not np.array_equal(a, plain)  # it did skip work: an approximation
    assert np.array_equal(flux(engines)[0], plain)  # the hooks left with the request
    assert not engines.warm.pipelines.base(engines.registry.get("tiny-flux"))[0].transformer.is_cache_enabled


def test_first_block_cache_on_a_video_transformer(engines):
    def run(cache):
        r = VideoRequest(model="tiny-wan", prompt="waves", width=32, height=32, num_frames=5, num_inference_steps=8,
                         guidance_scale=5.0, scheduler="euler", seed=2, cache=cache)  # fmt: skip
        return video.run(r, engines.registry.get("tiny-wan"), Ctx(), engines.warm)

    plain = run(None)
    cached = run(StepCache(method="first_block", threshold=0.5))
    reused = int(cached.versions["step_cache"].split("reused ")[1].split(" of")[0])
    assert reused >= 1, cached.versions["step_cache"]
    assert plain.artifacts[0].data != cached.artifacts[0].data
    assert run(StepCache(method="first_block", threshold=0.5)).artifacts[0].data == cached.artifacts[0].data


def test_the_engine_records_its_cache_and_batches_only_interval_methods(engines):
    entry = engines.registry.get("digits")
    r = Txt2ImgRequest(model="digits", prompt="4", width=16, height=16, num_inference_steps=9, guidance_scale=1.5,
                       scheduler="ddim", seed=3, cache=StepCache(method="deep", interval=3))  # fmt: skip
    result = engine_txt2img.run(r, entry, Ctx(), engines.warm)
    assert result.versions["step_cache"] == "deep interval=3; reused 6 of 9 denoiser calls"
    assert result.versions["engine_compiled"] == "off"  # the test engines compile nothing
    uncached = engine_txt2img.run(r.model_copy(update={"cache": None}), entry, Ctx(), engines.warm)
    assert "step_cache" not in uncached.versions
    assert 0 < np.abs(decode(result.artifacts[0]) - decode(uncached.artifacts[0])).mean() < 20
    # DeepCache decides by the step: it batches, its settings in the key; an adaptive method runs alone
    key = engine_txt2img.batch_key(r, entry)
    assert key is not None and ("deep", 3) in key
    assert key != engine_txt2img.batch_key(r.model_copy(update={"cache": StepCache(method="deep", interval=2)}), entry)
    assert engine_txt2img.batch_key(r.model_copy(update={"cache": None}), entry) != key
    adaptive = r.model_copy(update={"cache": StepCache(method="first_block", threshold=0.1)})
    assert engine_txt2img.batch_key(adaptive, entry) is None


def test_first_block_cache_on_a_one_block_transformer_runs_uncached(engines):
    """diffusers' First-Block Cache fails on a transformer of one block (nothing to skip): it runs uncached and says
    it reused nothing, so what admission accepted still runs (found by the accepted-runs property)."""

    def run(cache):
        r = VideoRequest(model="tiny-cogvideox", prompt="waves", width=32, height=32, num_frames=9,
                         num_inference_steps=4, guidance_scale=6.0, scheduler="ddim", seed=2, cache=cache)  # fmt: skip
        return video.run(r, engines.registry.get("tiny-cogvideox"), Ctx(), engines.warm)

    cached = run(StepCache(method="first_block", threshold=0.5))
    assert "reused 0 of" in cached.versions["step_cache"]
    assert cached.artifacts[0].data == run(None).artifacts[0].data
