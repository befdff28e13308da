"""Text to video with a diffusers pipeline: an H.264 MP4 and a poster PNG."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from core.contract import Artifact, Executor, RunContext, RunResult
from core.pipelines.loader import denoise, png
from core.registry import ModelEntry
from core.schemas import ModelRef, VideoRequest
from core.warm import Warm


def encode(frames: np.ndarray, request: VideoRequest) -> list[Artifact]:
    from diffusers.utils import export_to_video
    from PIL import Image

    frames = np.asarray(frames)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "video.mp4"
        export_to_video(list(frames), str(path), fps=request.fps)
        mp4 = path.read_bytes()
    h, w = frames.shape[1:3]
    poster = Image.fromarray((np.clip(frames[0], 0, 1) * 255).round().astype(np.uint8))
    meta = {"width": int(w), "height": int(h), "seed": request.seed}
    return [
        Artifact(mp4, "video/mp4", "mp4", {**meta, "num_frames": int(frames.shape[0]), "fps": request.fps}),
        Artifact(png(poster), "image/png", "png", {**meta, "role": "poster"}),
    ]


def run(request: VideoRequest, model: ModelEntry, ctx: RunContext, warm: Warm) -> RunResult:
    # 1. load (0 ms when warm)
    base, load_ms = warm.pipelines.base(model)
    # 2. this request's pipeline: the cached components with a fresh scheduler
    scheduler = warm.pipelines.scheduler(request.scheduler, base, model)
    pipe = type(base).from_pipe(base, scheduler=scheduler) if hasattr(base, "from_pipe") else base
    # 3. denoise the frames
    denoised = denoise(pipe, request, ctx, warm.pipelines.fast, num_frames=request.num_frames, output_type="np")
    # 4. encode
    model_ref = ModelRef(id=model.id, sha256=model.version)
    frames = encode(denoised.out.frames[0], request)
    return RunResult(frames, load_ms, denoised.inference_ms, model_ref, denoised.versions)


EXECUTOR: Executor[VideoRequest] = Executor(run)
