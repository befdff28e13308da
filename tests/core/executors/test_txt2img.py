"""Text to image on a tiny Stable Diffusion pipeline: the seed, the prompt and the scheduler each change pixels."""

from __future__ import annotations

import numpy as np

from core.executors import txt2img
from core.schemas import Txt2ImgRequest
from tests.core.executors.conftest import Ctx, decode


def request(**kw) -> Txt2ImgRequest:
    base = dict(model="tiny-sd", prompt="a red house", width=64, height=64, num_inference_steps=2,
                guidance_scale=5.0, scheduler="ddim", seed=1, num_images=1)  # fmt: skip
    return Txt2ImgRequest(**{**base, **kw})


def draw(engines, **kw) -> np.ndarray:
    return decode(txt2img.run(request(**kw), engines.registry.get("tiny-sd"), Ctx(), engines.warm).artifacts[0])


def test_pinned_slice_and_what_changes_the_pixels(engines):
    ctx = Ctx()
    result = txt2img.run(request(), engines.registry.get("tiny-sd"), ctx, engines.warm)
    a = decode(result.artifacts[0])
    assert a.shape == (64, 64, 3) and ctx.steps[-1] == (2, 2)
    expected = [[77, 147, 105], [124, 124, 76], [151, 142, 59]]
    assert np.abs(a[30:33, 30:33, 0] - np.array(expected)).max() <= 2, a[30:33, 30:33, 0].tolist()
    assert np.array_equal(a, draw(engines))  # the same request: the same pixels
    for other in (dict(seed=2), dict(prompt="a blue car"), dict(scheduler="euler_a")):
        assert np.abs(a - draw(engines, **other)).max() >= 5, other
