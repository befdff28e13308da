"""ControlNet preprocessors, in one table: ``PREPROCESSORS[name](image, request, warm: Warm) -> control image``.

- ``canny``: OpenCV's edge map;
- ``depth``: a transformers depth-estimation model (Depth Anything, DPT) from MODELS_DIR or a hub id, loaded once
  and kept warm in the worker's cache; its map normalised to 0-255, at the image's size;
- ``none``: the image as given.

Adding one (pose, segmentation) is a function here, a row in the table and its name in ``catalog.PREPROCESSORS``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.warm import Warm


def canny(image, request, warm: Warm):
    import cv2
    from PIL import Image

    edges = cv2.Canny(np.asarray(image), request.canny_low_threshold, request.canny_high_threshold)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def depth(image, request, warm: Warm):
    import torch
    from PIL import Image

    model, processor = warm.pipelines.depth_model()
    inputs = processor(images=image.convert("RGB"), return_tensors="pt").to(model.device)
    with torch.inference_mode():
        predicted = model(**inputs).predicted_depth  # (1, h, w): larger is nearer
    d = torch.nn.functional.interpolate(
        predicted[:, None].float(), size=(image.height, image.width), mode="bicubic", align_corners=False
    )[0, 0]
    span = d.max() - d.min()
    d = (d - d.min()) / span if span > 0 else torch.zeros_like(d)  # nearest white, farthest black
    arr = (d * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(np.stack([arr] * 3, axis=-1))


def none(image, request, warm: Warm):
    return image


PREPROCESSORS: dict[str, Callable] = {"canny": canny, "depth": depth, "none": none}
