"""ControlNet: the control image (its canny edges) conditions the pixels and is returned beside them."""

from __future__ import annotations

import numpy as np

from core.executors import controlnet
from core.schemas import ControlNetRequest
from tests.core.executors.conftest import Ctx, decode, solid, split


def draw(engines, image, preprocess: str = "canny") -> tuple[np.ndarray, np.ndarray]:
    ctx = Ctx()
    req = ControlNetRequest(
        model="tiny-sd",
        controlnet="tiny-controlnet",
        prompt="a house",
        control_image=ctx.add(image),
        preprocess=preprocess,
        controlnet_conditioning_scale=5.0,
        width=64,
        height=64,
        num_inference_steps=2,
        guidance_scale=5.0,
        scheduler="ddim",
        seed=5,
    )
    result = controlnet.run(req, engines.registry.get("tiny-sd"), ctx, engines.warm)
    assert [a.meta.get("role") for a in result.artifacts] == [None, "control_image"]
    return decode(result.artifacts[0]), decode(result.artifacts[1])


def give_the_zero_convolutions_weights(engines) -> None:
    """A fresh ControlNet's output convolutions are zero (so training starts from the base model), and so are the
    tiny fixture's: seeded weights let the control image reach the pixels, which is what this test holds."""
    import torch

    model, _ = engines.warm.pipelines.controlnet("tiny-controlnet", engines.registry.get("tiny-sd"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        convs = [*model.controlnet_down_blocks, model.controlnet_mid_block, model.controlnet_cond_embedding.conv_out]
        for conv in convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 4.0)


def test_the_edge_map_conditions_the_image(engines):
    give_the_zero_convolutions_weights(engines)
    edged, edges = draw(engines, split())
    _, no_edges = draw(engines, solid((120, 120, 120)))
    assert edges[:, 30:34].max() == 255 and edges[:, :28].max() == 0  # canny found the one vertical edge
    assert no_edges.max() == 0
    # same seed and prompt, the map given as is: the control image alone made the difference
    dark, _ = draw(engines, solid((0, 0, 0)), "none")
    light, _ = draw(engines, solid((255, 255, 255)), "none")
    assert np.abs(dark - light).mean() > 0.2, np.abs(dark - light).mean()  # 0.0 with the zero convolutions
    expected = [[168, 181, 162], [122, 143, 138], [132, 146, 144]]
    assert np.abs(edged[30:33, 30:33, 0] - np.array(expected)).max() <= 2, edged[30:33, 30:33, 0].tolist()
