"""Inpainting: white pixels of the mask are repainted from the seed, the rest kept from the image. The tiny
pipeline's VAE is random (it keeps little of any image), so the test holds the mask by what the seed changes: the
repainted half, not the kept one."""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.executors import inpaint
from core.schemas import InpaintRequest
from tests.core.executors.conftest import Ctx, decode, split


def draw(engines, seed: int) -> np.ndarray:
    ctx = Ctx()
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255  # repaint the right half
    req = InpaintRequest(model="tiny-sd", prompt="a dog", image=ctx.add(split()),
                         mask_image=ctx.add(Image.fromarray(mask)), width=64, height=64, num_inference_steps=2,
                         guidance_scale=5.0, scheduler="ddim", seed=seed)  # fmt: skip
    return decode(inpaint.run(req, engines.registry.get("tiny-sd"), ctx, engines.warm).artifacts[0])


def test_the_seed_repaints_the_masked_half_only(engines):
    a, b = draw(engines, 3), draw(engines, 4)
    kept = np.abs(a - b)[:, :16].mean()  # away from the mask's edge (the decoder's reach)
    repainted = np.abs(a - b)[:, 48:].mean()
    assert repainted > 4 * max(kept, 0.25), (kept, repainted)
    expected = [[0, 111, 139], [0, 217, 191], [123, 153, 71]]
    assert np.abs(a[30:33, 48:51, 0] - np.array(expected)).max() <= 2, a[30:33, 48:51, 0].tolist()
