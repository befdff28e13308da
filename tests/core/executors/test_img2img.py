"""Image to image: the output follows the input image, the less so the higher the strength (at 1.0 the input is
all but noise). The tiny pipeline's VAE is random (it keeps little of any image), so the test compares outputs with
outputs, not with the input."""

from __future__ import annotations

import numpy as np

from core.executors import img2img
from core.schemas import Img2ImgRequest
from tests.core.executors.conftest import Ctx, decode, solid


def draw(engines, color, strength: float) -> np.ndarray:
    ctx = Ctx()
    req = Img2ImgRequest(model="tiny-sd", prompt="a tree", image=ctx.add(solid(color)), strength=strength, width=64,
                         height=64, num_inference_steps=4, guidance_scale=5.0, scheduler="ddim", seed=2)  # fmt: skip
    return decode(img2img.run(req, engines.registry.get("tiny-sd"), ctx, engines.warm).artifacts[0])


def test_the_output_follows_the_input_image_by_strength(engines):
    red, blue = (220, 30, 30), (30, 30, 220)
    half = np.abs(draw(engines, red, 0.5) - draw(engines, blue, 0.5)).mean()
    full = np.abs(draw(engines, red, 1.0) - draw(engines, blue, 1.0)).mean()
    assert half > 1 and half > 3 * full, (half, full)
    out = draw(engines, red, 0.5)
    expected = [[108, 148, 193], [130, 125, 138], [52, 90, 195]]
    assert np.abs(out[30:33, 30:33, 0] - np.array(expected)).max() <= 2, out[30:33, 30:33, 0].tolist()


def test_sd3_draws_several_images_each_equal_to_its_seed_alone(engines):
    """SD3's pipeline encodes its input once per generator: the executor hands it the input per image."""
    ctx = Ctx()
    image = ctx.add(solid((220, 30, 30), (32, 32)))

    def draw(seed: int, n: int):
        req = Img2ImgRequest(model="tiny-sd3", prompt="a tree", image=image, strength=0.8, width=32, height=32,
                             num_inference_steps=2, guidance_scale=5.0, scheduler="default", seed=seed,
                             num_images=n)  # fmt: skip
        return [decode(a) for a in img2img.run(req, engines.registry.get("tiny-sd3"), ctx, engines.warm).artifacts]

    pair = draw(4, 2)
    assert len(pair) == 2 and np.abs(pair[0] - pair[1]).mean() > 0.5
    assert np.abs(pair[1] - draw(5, 1)[0]).max() <= 1
