"""Step previews: what a job shows of its image while it denoises, cheaply (no extra model call, no VAE decode).

- the engine (``core/ddpm``): the step's predicted x0, already in pixel space;
- latent pipelines: a linear projection of the latents to RGB (the 4x3 factors of each family's latent space, the
  "approximate cheap" decoder of the A1111 UI), at the latent's resolution (1/8 of the image).

Previews go to the job's event stream as ``preview`` events (``RunContext.preview``); ``bench/previews.py`` measures
what they cost per step.
"""

from __future__ import annotations

import io

import torch

# latent channel -> (R, G, B), per family
LATENT_RGB = {
    "sd": [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
    "sdxl": [
        [0.3920, 0.4054, 0.4549],
        [-0.2634, -0.0196, 0.0653],
        [0.0568, 0.1687, -0.0755],
        [-0.3112, -0.2359, -0.2076],
    ],
}
FAMILY_OF_PIPELINE = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}


def _png(rgb: torch.Tensor) -> bytes:
    """(H, W, 3) or (H, W) floats in [0, 1] -> PNG bytes."""
    from PIL import Image

    arr = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)  # fast: a preview is not kept
    return buf.getvalue()


def engine_png(x0: torch.Tensor) -> bytes:
    """One image's predicted x0, (C, H, W) in [-1, 1]."""
    img = (x0.detach().float() + 1) / 2
    return _png(img[0] if img.shape[0] == 1 else img[:3].permute(1, 2, 0))


def latent_png(latent: torch.Tensor, pipeline_class: str) -> bytes:
    """One image's latents (C, h, w) -> RGB by the family's linear factors; a family without them (the flow
    transformers' packed 16-channel latents) shows its first three channels, each stretched to [0, 1]."""
    lat = latent.detach().float()
    factors = LATENT_RGB.get(FAMILY_OF_PIPELINE.get(pipeline_class, ""))
    if factors is not None and lat.dim() == 3 and lat.shape[0] == len(factors):
        rgb = torch.einsum("chw,cr->hwr", lat, torch.tensor(factors))
        return _png((rgb + 1) / 2)
    if lat.dim() != 3:  # packed sequences (B tokens, C): no spatial layout to show
        lat = lat.reshape(-1, *lat.shape[-2:]) if lat.dim() > 3 else lat.unsqueeze(0)
    chans = lat[:3] if lat.shape[0] >= 3 else lat[:1].expand(3, *lat.shape[1:])
    lo = chans.amin(dim=(1, 2), keepdim=True)
    hi = chans.amax(dim=(1, 2), keepdim=True)
    return _png(((chans - lo) / (hi - lo + 1e-6)).permute(1, 2, 0))


def due(step: int, total: int, every: int) -> bool:
    """A preview every ``every`` steps (the last step is the image itself: none)."""
    return every > 0 and step % every == 0 and step < total
