"""The DDPM U-Net (Ho et al. 2020, appendix B), sized by config.

Residual blocks with GroupNorm, a sinusoidal time embedding added in every block,
self-attention at chosen resolutions, dropout. The net returns a raw tensor shaped
like its input; what it means (eps, x0, v) is the process's business, not the net's.
`patch_size > 1` folds p x p pixel patches into channels before the first conv and
unfolds them after the last (as DiT/U-ViT do), a cheap way to run small images fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udm.nets.conditioning import class_rows, refuse_condition


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) times t [B] -> [B, dim] (Transformer, DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, c_time: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(c_time, c_out)
        self.norm2, self.dropout = nn.GroupNorm(groups, c_out), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int, groups: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        # contiguous heads: SDPA's fused (flash) CPU kernel needs a unit stride on the last dimension, and a
        # transposed view would send it down the slower math path (experiments/benchmark/README.md, profile)
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).contiguous()
        h = F.scaled_dot_product_attention(*qkv.unbind(1))  # [B, heads, HW, C/heads]
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class Level(nn.Module):
    """The residual blocks (each optionally followed by attention) at one resolution."""

    def __init__(self, c_ins: Sequence[int], c_out: int, c_time: int, groups: int, dropout: float, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, c_out, c_time, groups, dropout) for c in c_ins)
        self.attns = nn.ModuleList(Attention(c_out, groups) if attention else nn.Identity() for _ in c_ins)


class UNet(nn.Module):
    """DDPM U-Net: net(x [B, C, H, W], t [B], cond=None) -> [B, C, H, W].

    channels * channel_mult[i] features at level i (resolution image_size / 2^i / patch_size),
    num_res_blocks blocks per level on the way down and num_res_blocks + 1 on the way up,
    attention wherever the feature map's side is in attention_resolutions. With num_classes, cond is a class
    label [B] in 0..num_classes - 1 (or -1, the null class; cond=None is null for all) whose learned embedding
    is added to the time embedding; without, the net is unconditional and refuses a condition.
    """

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (7,),
        dropout: float = 0.0,
        groups: int = 8,
        patch_size: int = 1,
        num_classes: int | None = None,
    ):
        super().__init__()
        levels = len(channel_mult)
        side = image_size // patch_size
        if image_size % patch_size or side % 2 ** (levels - 1):
            raise ValueError(
                f"image_size {image_size} must be divisible by patch_size * 2^(levels - 1) = "
                f"{patch_size * 2 ** (levels - 1)} for {levels} U-Net levels"
            )
        if channels < 1 or not channel_mult or any(m < 1 for m in channel_mult):
            raise ValueError(f"net.channels and every net.channel_mult must be >= 1, got {channels} and {list(channel_mult)}")
        unused = [r for r in attention_resolutions if r not in [side // 2**i for i in range(levels)]]
        if unused:
            raise ValueError(f"net.attention_resolutions={list(attention_resolutions)}: {unused} match(es) none of the "
                             f"feature-map sides {[side // 2**i for i in range(levels)]}; choose among them, or [] for none")
        if any(channels * m % groups for m in channel_mult):
            raise ValueError(f"every level width channels * mult must be divisible by groups={groups}")
        self.image_size, self.in_channels, self.patch_size = image_size, in_channels, patch_size
        self.channels = channels
        c_time = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, c_time), nn.SiLU(), nn.Linear(c_time, c_time))
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive number of classes (or null: unconditional), got {num_classes}")
        self.num_classes = num_classes
        self.class_emb = nn.Embedding(num_classes + 1, c_time) if num_classes else None  # row num_classes: the null class
        self.stem = nn.Conv2d(in_channels * patch_size**2, channels, 3, padding=1)

        widths = [channels * m for m in channel_mult]
        sides = [side // 2**i for i in range(levels)]
        skips = [channels]  # widths of the tensors the down path hands to the up path
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = channels
        for i, (w, sd) in enumerate(zip(widths, sides)):
            c_ins = [c] + [w] * (num_res_blocks - 1)
            self.down.append(Level(c_ins, w, c_time, groups, dropout, sd in attention_resolutions))
            skips += [w] * num_res_blocks
            c = w
            if i < levels - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
                skips.append(w)

        self.mid = Level([c, c], c, c_time, groups, dropout, attention=True)
        self.mid.attns[1] = nn.Identity()  # block, attention, block (DDPM's middle)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(levels)):
            w = widths[i]
            c_ins = []
            for _ in range(num_res_blocks + 1):
                c_ins.append(c + skips.pop())
                c = w
            self.up.append(Level(c_ins, w, c_time, groups, dropout, sides[i] in attention_resolutions))
            if i > 0:
                self.upsample.append(nn.Conv2d(w, w, 3, padding=1))
        self.out = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, in_channels * patch_size**2, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    uses_time = True  # the output depends on t (udm.samplers.OutputCache applies to nets that ignore it)

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        if self.class_emb is None:
            refuse_condition(self, cond)
        emb = self.time_mlp(timestep_embedding(t, self.channels))
        if self.class_emb is not None:
            emb = emb + self.class_emb(class_rows(cond, self.num_classes, len(x), x.device))
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x, self.patch_size)
        h = self.stem(x)
        hs = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        for block, attn in zip(self.mid.blocks, self.mid.attns):
            h = attn(block(h, emb))
        for i, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.out(h)
        return F.pixel_shuffle(h, self.patch_size) if self.patch_size > 1 else h
