"""Text to video: an MP4 of the frames asked for and a poster PNG of the first frame, drawn from the seed."""

from __future__ import annotations

import numpy as np

from core.executors import video
from core.schemas import VideoRequest
from tests.core.executors.conftest import Ctx, decode


def render(engines, model: str, seed: int, frames: int):
    req = VideoRequest(model=model, prompt="a cat", width=16 if "cog" in model else 32, height=16 if "cog" in model
                       else 32, num_frames=frames, num_inference_steps=2, guidance_scale=5.0, scheduler="default",
                       seed=seed, fps=4)  # fmt: skip
    return video.run(req, engines.registry.get(model), Ctx(), engines.warm)


def test_mp4_and_poster_from_the_seed(engines, tmp_path):
    import imageio_ffmpeg

    result = render(engines, "tiny-cogvideox", 1, 9)
    mp4, poster = result.artifacts
    assert mp4.content_type == "video/mp4" and mp4.meta["num_frames"] == 9 and poster.meta["role"] == "poster"
    (tmp_path / "v.mp4").write_bytes(mp4.data)
    frames = imageio_ffmpeg.read_frames(str(tmp_path / "v.mp4"))
    assert tuple(next(frames)["size"]) == (16, 16) and len(list(frames)) == 9
    a = decode(poster)
    assert a.std() > 3, "a flat poster pins nothing"
    expected = [[255, 255, 132], [232, 228, 155], [255, 238, 255]]
    assert np.abs(a[6:9, 6:9, 0] - np.array(expected)).max() <= 2, a[6:9, 6:9, 0].tolist()
    assert np.abs(a - decode(render(engines, "tiny-cogvideox", 2, 9).artifacts[1])).mean() > 1
