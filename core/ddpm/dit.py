"""A Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"), the backbone SD3
and Flux build on, as the engine's second network beside the U-Net.

1. patchify: a ``patch_size`` convolution turns (C, H, W) into (H/p * W/p) tokens of ``hidden_size``;
2. position: a fixed 2-D sine-cosine embedding (``pos_embed="sincos"``) or a learned one added to the tokens;
3. ``depth`` transformer blocks, each conditioned on time and class by adaLN-Zero: the condition regresses a
   shift, a scale and a gate for the attention and the MLP, the gates initialised to zero so every block starts
   as the identity;
4. a final adaLN layer and a linear map back to patches, unpatchified to (C_out, H, W).

Same call as the U-Net: ``forward(x, t, y)``; label ``num_classes`` is the learned null class of classifier-free
guidance, ``y=None`` the null class for the whole batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from core.ddpm.unet import timestep_embedding


@dataclass
class DiTConfig:
    sample_size: int = 16
    in_channels: int = 1
    out_channels: int | None = None
    patch_size: int = 2
    hidden_size: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int | None = None
    pos_embed: str = "sincos"  # sincos | learned

    def __post_init__(self) -> None:
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}: {why} (got {getattr(self, name)!r})")

        if self.in_channels not in (1, 3) or self.out_channels not in (1, 3):
            raise bad("in_channels", "in and out channels must be 1 or 3")
        if self.patch_size < 1 or self.sample_size % self.patch_size:
            raise bad("patch_size", f"must divide sample_size {self.sample_size}")
        if self.hidden_size < 1 or self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise bad("hidden_size", "must be a multiple of num_heads and of 4")
        if self.depth < 1:
            raise bad("depth", "must be at least 1")
        if self.pos_embed not in ("sincos", "learned"):
            raise bad("pos_embed", "must be sincos or learned")
        if self.num_classes is not None and self.num_classes < 1:
            raise bad("num_classes", "must be positive or null")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown DiT config field")
        return cls(**d)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim) fixed position embedding: half the channels encode the row, half the column."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half // 2, dtype=torch.float64) / (half / 2))
    pos = torch.arange(grid, dtype=torch.float64)
    out = torch.einsum("p,f->pf", pos, omega)
    emb_1d = torch.cat([out.sin(), out.cos()], dim=1)  # (grid, half)
    rows = emb_1d[:, None, :].expand(grid, grid, half)
    cols = emb_1d[None, :, :].expand(grid, grid, half)
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1[:, None] * self.attn(h, h, h, need_weights=False)[0]
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """eps/x0/v/velocity network: forward(x: (B, C, H, W), t: (B,), y: (B,) long | None) -> (B, C_out, H, W)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        c, p, d = config, config.patch_size, config.hidden_size
        self.grid = c.sample_size // p
        # 1. patchify
        self.patch = nn.Conv2d(c.in_channels, d, p, stride=p)
        # 2. position
        if c.pos_embed == "sincos":
            self.register_buffer("pos", sincos_2d(d, self.grid)[None], persistent=False)
        else:
            self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, d) * 0.02)
        # conditions: time (sinusoidal, then an MLP) and class (with the null class)
        self.time_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.class_emb = nn.Embedding(c.num_classes + 1, d) if c.num_classes else None
        # 3. the blocks
        self.blocks = nn.ModuleList(DiTBlock(d, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        # 4. back to patches: adaLN, then a linear map, both starting at zero
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, p * p * c.out_channels)
        for layer in (self.ada_out[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.xavier_uniform_(self.patch.weight.view(d, -1))

    @property
    def null_class(self) -> int | None:
        """The label of the learned unconditional class (classifier-free guidance), or None."""
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h, cond = self.tokens(x, t, y)
        for block in self.blocks:
            h = block(h, cond)
        return self.head(h, cond)

    def tokens(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-2 and the condition: (tokens (B, N, D), condition (B, D)); ``y=None``: the null class."""
        c = self.config
        if x.shape[-1] != c.sample_size or x.shape[-2] != c.sample_size:
            raise ValueError(f"sample: a DiT of sample_size {c.sample_size} takes {c.sample_size}² inputs")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        cond = self.time_mlp(timestep_embedding(t, 256))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), c.num_classes, device=x.device, dtype=torch.long)
            cond = cond + self.class_emb(y)
        return self.patch(x).flatten(2).transpose(1, 2) + self.pos, cond  # (B, N, D)

    def head(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Step 4: the final adaLN layer, back to patches, unpatchified to (B, C_out, H, W)."""
        c = self.config
        shift, scale = self.ada_out(cond).chunk(2, dim=1)
        h = self.out(modulate(self.norm_out(h), shift, scale))  # (B, N, p*p*C)
        # unpatchify
        b, g, p = h.shape[0], self.grid, c.patch_size
        h = h.reshape(b, g, g, p, p, c.out_channels).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, c.out_channels, g * p, g * p)
