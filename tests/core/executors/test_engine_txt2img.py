"""The engine's text-to-image executor: a label drawn from the seed, every step reported, a batch equal to alone."""

from __future__ import annotations

import numpy as np

from core.executors import engine_txt2img
from core.schemas import Txt2ImgRequest
from tests.core.executors.conftest import Ctx, decode


def request(**kw) -> Txt2ImgRequest:
    base = dict(model="digits", prompt="7", width=16, height=16, num_inference_steps=10, guidance_scale=1.5,
                scheduler="ddim", seed=3, num_images=1)  # fmt: skip
    return Txt2ImgRequest(**{**base, **kw})


def test_draws_the_label_from_the_seed_with_a_pinned_slice(engines):
    ctx = Ctx()
    entry = engines.registry.get("digits")
    result = engine_txt2img.run(request(num_images=2), entry, ctx, engines.warm)
    a, b = (decode(x) for x in result.artifacts)
    assert a.shape == (16, 16) and a.std() > 30 and np.abs(a - b).mean() > 5  # two draws of a 7, not blanks
    assert [x.meta["seed"] for x in result.artifacts] == [3, 4] and result.artifacts[0].meta["label"] == "7"
    assert ctx.steps == [(i, 10) for i in range(1, 11)]  # every step reported (where cancel is checked)
    assert result.model.id == "digits" and result.model.sha256 == entry.version
    expected = [[139, 139, 254], [139, 139, 254], [252, 252, 225]]
    assert np.abs(a[6:9, 6:9] - np.array(expected)).max() <= 2, a[6:9, 6:9].tolist()


def test_a_batch_draws_each_request_as_alone(engines):
    entry = engines.registry.get("digits")
    requests = [request(prompt="1", seed=5), request(prompt="9", seed=6, num_images=2)]
    outcomes = engine_txt2img.run_batch(requests, entry, [Ctx(), Ctx()], engines.warm)
    for r, outcome in zip(requests, outcomes, strict=True):
        alone = engine_txt2img.run(r, entry, Ctx(), engines.warm)
        for x, y in zip(outcome.artifacts, alone.artifacts, strict=True):
            assert np.abs(decode(x) - decode(y)).max() <= 1
