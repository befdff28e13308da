"""A U-Net for diffusion (DDPM / improved-diffusion style).

Residual blocks (GroupNorm, SiLU), a sinusoidal time embedding through an MLP added in every block,
self-attention at chosen resolutions, optional class conditioning with a learned null class for
classifier-free guidance, dropout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    sample_size: int = 16
    in_channels: int = 1
    out_channels: int | None = None
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8,)
    num_heads: int = 4
    dropout: float = 0.1
    num_classes: int | None = None
    norm_groups: int = 8

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}: {why} (got {getattr(self, name)!r})")

        if self.in_channels not in (1, 3):
            raise bad("in_channels", "must be 1 or 3")
        if self.out_channels not in (1, 3):
            raise bad("out_channels", "must be 1 or 3")
        if self.base_channels < 1:
            raise bad("base_channels", "must be positive")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise bad("channel_mult", "must be a non-empty list of positive integers")
        if self.num_res_blocks < 1:
            raise bad("num_res_blocks", "must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)")
        if self.num_classes is not None and self.num_classes < 1:
            raise bad("num_classes", "must be positive or null")
        if self.num_heads < 1:
            raise bad("num_heads", "must be positive")
        if self.norm_groups < 1 or any((self.base_channels * m) % self.norm_groups for m in self.channel_mult):
            raise bad("norm_groups", "must divide base_channels * every channel_mult")
        levels = len(self.channel_mult) - 1
        if self.sample_size < 1 or self.sample_size % (2**levels):
            raise bad("sample_size", f"must be divisible by 2^{levels}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown U-Net config field")
        return cls(**d)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps. t: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_module(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads if ch % num_heads == 0 else 1
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_module(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.num_heads
        # 1x1 convolutions applied as matmuls over (B, HW, C): the same weights, but contiguous (B, heads, HW, d)
        # q, k, v let scaled_dot_product_attention take its fused kernel instead of the math fallback
        seq = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        qkv = F.linear(seq, self.qkv.weight.flatten(1), self.qkv.bias)  # (B, HW, 3C)
        q, k, v = qkv.view(b, h * w, 3, self.num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        out = F.linear(out, self.proj.weight.flatten(1), self.proj.bias)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """eps/x0/v/velocity network. forward(x: (B, C, H, W), t: (B,), y: (B,) long | None) -> (B, C_out, H, W).

    With ``num_classes`` set, label ``num_classes`` is the learned null class (unconditional) used by
    classifier-free guidance; ``y=None`` means the null class for the whole batch.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch = config.base_channels
        emb_dim = 4 * ch
        g = config.norm_groups
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(config.num_classes + 1, emb_dim) if config.num_classes else None
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_chs = [ch]
        cur, res = ch, config.sample_size
        for level, mult in enumerate(config.channel_mult):
            out = config.base_channels * mult
            for _ in range(config.num_res_blocks):
                blocks = [ResBlock(cur, out, emb_dim, config.dropout, g)]
                if res in config.attention_resolutions:
                    blocks.append(AttentionBlock(out, config.num_heads, g))
                self.down.append(nn.ModuleList(blocks))
                cur = out
                skip_chs.append(cur)
            if level != len(config.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(cur)]))
                skip_chs.append(cur)
                res //= 2

        self.mid = nn.ModuleList(
            [
                ResBlock(cur, cur, emb_dim, config.dropout, g),
                AttentionBlock(cur, config.num_heads, g),
                ResBlock(cur, cur, emb_dim, config.dropout, g),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            out = config.base_channels * mult
            for i in range(config.num_res_blocks + 1):
                blocks = [ResBlock(cur + skip_chs.pop(), out, emb_dim, config.dropout, g)]
                cur = out
                if res in config.attention_resolutions:
                    blocks.append(AttentionBlock(out, config.num_heads, g))
                if level != 0 and i == config.num_res_blocks:
                    blocks.append(Upsample(out))
                    res *= 2
                self.up.append(nn.ModuleList(blocks))

        self.norm_out = nn.GroupNorm(g, cur)
        self.conv_out = zero_module(nn.Conv2d(cur, config.out_channels, 3, padding=1))

    @staticmethod
    def _run_blocks(blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for b in blocks:
            h = b(h, emb) if isinstance(b, ResBlock) else b(h)
        return h

    def _embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The condition every block reads: the time embedding plus the class's (``y=None``: the null class)."""
        levels = len(self.config.channel_mult) - 1
        if x.shape[-1] % (2**levels) or x.shape[-2] % (2**levels):
            raise ValueError(f"sample: height and width must be divisible by {2**levels}, got {tuple(x.shape[-2:])}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.config.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_emb(y)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self._embed(x, t, y)
        h = self.conv_in(x)
        hs = [h]
        for blocks in self.down:
            h = self._run_blocks(blocks, h, emb)
            hs.append(h)
        h = self._run_blocks(self.mid, h, emb)
        for blocks in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            h = self._run_blocks(blocks, h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward_deep(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, skip: int, deep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DeepCache's two passes (Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for Free").

        ``deep=None``, the full pass: exactly :meth:`forward`'s operations, also returning ``deep``, the feature the
        last ``skip`` up blocks take from the deeper ones. Given ``deep`` (kept from a full pass at a nearby step),
        the shallow pass: only ``conv_in``, the first ``skip - 1`` down blocks (the skip connections those up blocks
        read) and the last ``skip`` up blocks run. Returns (output, deep)."""
        if not 1 <= skip <= len(self.up):
            raise ValueError(f"skip: must be in [1, {len(self.up)}], got {skip}")
        emb = self._embed(x, t, y)
        # 1. the shallow encoder: everything when full, else only what the last `skip` up blocks read
        h = self.conv_in(x)
        hs = [h]
        for blocks in self.down if deep is None else self.down[: skip - 1]:
            h = self._run_blocks(blocks, h, emb)
            hs.append(h)
        # 2. the deep part, run (full) or reused
        if deep is None:
            h = self._run_blocks(self.mid, h, emb)
            for blocks in self.up[: len(self.up) - skip]:
                h = torch.cat([h, hs.pop()], dim=1)
                h = self._run_blocks(blocks, h, emb)
            deep = h
        # 3. the shallow decoder
        h = deep
        for blocks in self.up[len(self.up) - skip :]:
            h = torch.cat([h, hs.pop()], dim=1)
            h = self._run_blocks(blocks, h, emb)
        return self.conv_out(F.silu(self.norm_out(h))), deep

    @property
    def null_class(self) -> int | None:
        return self.config.num_classes


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
