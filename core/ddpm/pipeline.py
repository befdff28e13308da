"""A trained engine model on disk and in memory: ``save_pretrained`` / ``from_pretrained`` and ``generate``.

Folder layout (like a diffusers model folder)::

    config.json             {"_class_name": "DDPMEngineModel", "unet": {...} or "dit": {...}, "labels": [...], ...}
    model.safetensors       the EMA weights
    scheduler_config.json   {"kind": "ddpm", "num_train_timesteps", "beta_schedule", "prediction_type"}
                            or {"kind": "flow"}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from core.catalog import ENGINE_SCHEDULERS
from core.ddpm.cache import StepCache, make_step_cache
from core.ddpm.dit import DiT, DiTConfig
from core.ddpm.labels import resolve_label
from core.ddpm.samplers import make_scheduler, sample
from core.ddpm.unet import UNet, UNetConfig

CLASS_NAME = "DDPMEngineModel"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SCHEDULER_FILE = "scheduler_config.json"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path.name}: missing from {path.parent}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path.name}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: expected a JSON object")
    return data


class DDPMEngineModel:
    """A U-Net with its scheduler config and class labels."""

    def __init__(
        self,
        unet: UNet,
        scheduler_config: dict,
        labels: list[str] | None = None,
        default_guidance_scale: float = 1.0,
        default_num_inference_steps: int = 50,
        metadata: dict | None = None,
        default_sampler: str | None = None,
    ):
        if (labels is None) != (unet.config.num_classes is None) or (
            labels is not None and len(labels) != unet.config.num_classes
        ):
            raise ValueError("labels: must name exactly num_classes classes (or be null for an unconditional model)")
        self.unet = unet.eval()
        self.scheduler_config = dict(scheduler_config)
        self.labels = labels
        self.default_guidance_scale = default_guidance_scale
        self.default_num_inference_steps = default_num_inference_steps
        self.metadata = metadata or {}
        self.sha256: str | None = None
        if default_sampler is not None and default_sampler not in self.samplers:
            raise ValueError(f"default_sampler: {default_sampler!r} is not one of {self.samplers}")
        self._default_sampler = default_sampler

    @property
    def components(self) -> dict:
        """The torch modules, as a diffusers pipeline names them (the warm cache sizes models by these)."""
        return {"unet": self.unet}

    @property
    def sample_size(self) -> int:
        return self.unet.config.sample_size

    @property
    def default_sampler(self) -> str:
        """The model's own choice (config ``default_sampler``), else its objective's first sampler."""
        return self._default_sampler or self.samplers[0]

    @property
    def samplers(self) -> list[str]:
        return list(ENGINE_SCHEDULERS["flow" if self.scheduler_config.get("kind") == "flow" else "ddpm"])

    def label_index(self, label: str | int) -> int:
        """Resolve a label given as its name, its index, or (for digits) as an English word."""
        if self.labels is None:
            raise ValueError("prompt: this model is unconditional and takes no label")
        return resolve_label(self.labels, label)

    # -- persistence -------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "_class_name": CLASS_NAME,
            ("dit" if isinstance(self.unet, DiT) else "unet"): self.unet.config.to_dict(),
            "labels": self.labels,
            "default_guidance_scale": self.default_guidance_scale,
            "default_num_inference_steps": self.default_num_inference_steps,
            **({"default_sampler": self._default_sampler} if self._default_sampler else {}),
            "metadata": self.metadata,
        }
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (path / SCHEDULER_FILE).write_text(json.dumps(self.scheduler_config, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.unet.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        """Load a folder written by :meth:`save_pretrained`; a bad or missing file raises ValueError naming it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"{path}: not a model folder")
        config = _read_json(path / CONFIG_FILE)
        if config.get("_class_name") != CLASS_NAME:
            raise ValueError(f"{CONFIG_FILE}: _class_name must be {CLASS_NAME!r}")
        try:  # the network: a U-Net ("unet") or a DiT ("dit")
            net_config = DiTConfig.from_dict(config["dit"]) if "dit" in config else UNetConfig.from_dict(config["unet"])
        except KeyError as e:
            raise ValueError(f"{CONFIG_FILE}: missing field 'unet' (or 'dit')") from e
        except (TypeError, ValueError) as e:
            raise ValueError(f"{CONFIG_FILE}: {e}") from e
        scheduler_config = _read_json(path / SCHEDULER_FILE)
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise ValueError(f"{WEIGHTS_FILE}: missing from {path}")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ValueError(f"{WEIGHTS_FILE}: unreadable ({e})") from e
        unet = DiT(net_config) if isinstance(net_config, DiTConfig) else UNet(net_config)
        try:
            unet.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{WEIGHTS_FILE}: does not match {CONFIG_FILE} ({str(e).splitlines()[0]})") from e
        unet.to(device=device, dtype=dtype)
        model = cls(
            unet,
            scheduler_config,
            labels=config.get("labels"),
            default_guidance_scale=float(config.get("default_guidance_scale", 1.0)),
            default_num_inference_steps=int(config.get("default_num_inference_steps", 50)),
            metadata=config.get("metadata") or {},
            default_sampler=config.get("default_sampler"),
        )
        model.sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
        return model

    # -- inference ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def step_cache(self, method: str, value: float) -> StepCache:
        """A fresh step cache (``core.ddpm.cache``) for one sampling run of this model's network."""
        return make_step_cache(self.unet, method, value)

    def _denoiser(self, step_cache: StepCache | None) -> Callable:
        """The network as the sampler calls it: in its own dtype, through the step cache when one is given."""
        net = step_cache if step_cache is not None else self.unet
        dtype = next(self.unet.parameters()).dtype
        return lambda x, t, y: net(x.to(dtype), t, y).float()

    def generate(
        self,
        labels: list[str | int] | None = None,
        num_images: int = 1,
        num_inference_steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        seed: int = 0,
        size: int | None = None,
        callback: Callable[[int, int], bool | None] | None = None,
        per_image_seeds: bool = True,
        preview: Callable[[int, int, torch.Tensor], None] | None = None,
        sampler_options: dict | None = None,
        step_cache: StepCache | None = None,
    ) -> torch.Tensor:
        """Draw images in [-1, 1], shape (B, C, H, W).

        ``sampler_options``: the sampler's own settings (e.g. ``{"clip_sample": False}``), for studies.
        ``step_cache``: a fresh :meth:`step_cache` to reuse the network's work between steps (it counts what it
        reused).

        ``labels``: one label per image (or one for all). With ``per_image_seeds`` image i's noise comes from
        ``seed + i`` alone, so any single image can be drawn again by itself.
        """
        sampler = sampler or self.default_sampler
        steps = num_inference_steps or self.default_num_inference_steps
        scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        size = size or self.sample_size
        cfg = self.unet.config
        y = None
        if labels is not None:
            if len(labels) == 1 and num_images > 1:
                labels = list(labels) * num_images
            if len(labels) != num_images:
                raise ValueError("labels: give one label, or one per image")
            y = torch.tensor([self.label_index(lbl) for lbl in labels], dtype=torch.long)
        elif self.labels is not None:
            y = None  # unconditional draw from a class model: the null class
        shape = (num_images, cfg.in_channels, size, size)
        if per_image_seeds:
            noise = torch.cat(
                [
                    torch.randn((1, *shape[1:]), generator=torch.Generator().manual_seed(seed + i))
                    for i in range(num_images)
                ]
            )
        else:
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        scheduler = make_scheduler(sampler, self.scheduler_config, **(sampler_options or {}))
        return sample(
            self._denoiser(step_cache),
            scheduler,
            shape,
            steps,
            labels=y,
            null_class=cfg.num_classes if y is not None else None,
            guidance_scale=scale,
            eta=eta,
            generator=torch.Generator().manual_seed(seed + 1_000_003),
            device=self.device,
            callback=callback,
            noise=noise,
            preview=preview,
        )


# deterministic: a batch draws exactly what each request draws alone
BATCHABLE_SAMPLERS = ("ddim", "dpmpp_2m", "dpmpp_2m_karras", "euler")


def generate_batch(
    model: DDPMEngineModel,
    draws: list[tuple[list[str | int] | None, int, int]],
    num_inference_steps: int,
    sampler: str,
    guidance_scale: float,
    size: int,
    callback: Callable[[int, int], bool | None] | None = None,
    preview: Callable[[int, int, torch.Tensor], None] | None = None,
    step_cache: StepCache | None = None,
) -> list[torch.Tensor]:
    """Several requests' draws ``(labels, num_images, seed)`` denoised together in one batch; returns one tensor per
    draw. Each image's noise comes from ``seed + i`` alone, as in :meth:`DDPMEngineModel.generate`, so an image drawn
    amid a batch equals the same request drawn alone (up to float rounding). Deterministic samplers only (DDIM with
    eta 0, flow Euler): an ancestral sampler's step noise is drawn per batch. A ``step_cache`` shared by a batch must
    decide by the step alone (DeepCache's interval), not by the batch's numbers."""
    if sampler not in BATCHABLE_SAMPLERS:
        raise ValueError(f"sampler: {sampler!r} draws step noise per batch; batch only {BATCHABLE_SAMPLERS}")
    cfg = model.unet.config
    noise, ys, counts = [], [], []
    for labels, n, seed in draws:
        noise += [
            torch.randn((1, cfg.in_channels, size, size), generator=torch.Generator().manual_seed(seed + i))
            for i in range(n)
        ]
        if labels is not None:
            labels = list(labels) * n if len(labels) == 1 else list(labels)
            ys += [model.label_index(lbl) for lbl in labels]
        counts.append(n)
    conditional = len(ys) == sum(counts)
    if ys and not conditional:
        raise ValueError("labels: every draw of a batch gives labels, or none does")
    y = torch.tensor(ys, dtype=torch.long) if conditional else None
    x = sample(
        model._denoiser(step_cache),
        make_scheduler(sampler, model.scheduler_config),
        (sum(counts), cfg.in_channels, size, size),
        num_inference_steps,
        labels=y,
        null_class=cfg.num_classes if y is not None else None,
        guidance_scale=guidance_scale,
        device=model.device,
        callback=callback,
        noise=torch.cat(noise),
        preview=preview,
    )
    return list(x.split(counts))


def to_pil_images(images: torch.Tensor) -> list:
    """(B, C, H, W) in [-1, 1] -> list of PIL images (L or RGB)."""
    from PIL import Image

    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    out = []
    for a in arr:
        out.append(
            Image.fromarray(a[0], mode="L") if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0), mode="RGB")
        )
    return out


def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 1):
    """Tile (B, C, H, W) images in [-1, 1] into one PIL image."""
    from PIL import Image

    tiles = to_pil_images(images)
    b = len(tiles)
    w, h = tiles[0].size
    cols = min(nrow, b)
    rows = (b + cols - 1) // cols
    grid = Image.new(tiles[0].mode, (cols * (w + pad) + pad, rows * (h + pad) + pad))
    for i, tile in enumerate(tiles):
        grid.paste(tile, (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return grid
