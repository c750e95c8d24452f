"""Encoders E and decoders q(x0 | z) of the encoding model (udm.processes.Latent).

An encoder maps data x0 to a latent z = E(x0) with unit mean square (so the variance-
preserving schedule sees data of the scale it was designed for, and E cannot win by
growing its output past the noise); a decoder maps a latent back to data and gives the
negative log-likelihood -log q(x0 | z) that trains it.

    images   ConvEncoder [B, C, H, W] -> [B, c, H/2^k, W/2^k]     ConvDecoder back, Gaussian NLL (MSE) or L1
    tokens   TokenEmbedding ids [B, L] -> [B, L, d]               TokenHead [B, L, d] -> logits [B, L, V], cross-entropy
    identity IdentityCoder: E = D = id (the latent process is then the pixel Gaussian process)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def unit_rms(z: Tensor, dims: tuple[int, ...], eps: float = 1e-6) -> Tensor:
    """z scaled to mean square 1 over `dims`."""
    return z * torch.rsqrt(z.pow(2).mean(dim=dims, keepdim=True) + eps)


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU())


class ConvEncoder(nn.Module):
    """x0 [B, C, H, W] -> z [B, latent_channels, H / 2^downsamples, W / 2^downsamples], unit RMS per sample."""

    def __init__(self, in_channels: int = 1, channels: int = 32, latent_channels: int = 4, downsamples: int = 2, groups: int = 8):
        super().__init__()
        layers: list[nn.Module] = [ConvBlock(in_channels, channels, groups)]
        for _ in range(downsamples):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), ConvBlock(channels, channels, groups)]
        layers.append(nn.Conv2d(channels, latent_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x0: Tensor) -> Tensor:
        return unit_rms(self.layers(x0), dims=(1, 2, 3))


class ConvDecoder(nn.Module):
    """z -> x0_hat in [-1, 1] (tanh); nll is the Gaussian decoder's -log q up to constants (mse) or L1."""

    real_valued = True  # what decode gives back: the encoding model declares its x0 from it

    def __init__(self, out_channels: int = 1, channels: int = 32, latent_channels: int = 4, downsamples: int = 2,
                 groups: int = 8, image_size: int = 28, loss: str = "mse"):
        super().__init__()
        if loss not in ("mse", "l1"):
            raise ValueError(f"unknown decoder loss {loss!r}; choose 'mse' or 'l1'")
        self.image_size, self.loss = image_size, loss
        layers: list[nn.Module] = [ConvBlock(latent_channels, channels, groups)]
        for _ in range(downsamples):
            layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), ConvBlock(channels, channels, groups)]
        self.layers = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.layers(z)
        if h.shape[-1] != self.image_size:  # 7 -> 28 is exact; other sizes (e.g. 30 -> 8 -> 32) are resized back (nearest)
            h = F.interpolate(h, size=(self.image_size, self.image_size), mode="nearest")
        return torch.tanh(self.out(h))

    def decode(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self(z)

    def nll(self, z: Tensor, x0: Tensor) -> Tensor:
        x = self(z)
        return F.mse_loss(x, x0) if self.loss == "mse" else F.l1_loss(x, x0)


class TokenEmbedding(nn.Module):
    """Token ids [B, L] -> embeddings [B, L, dim] of unit RMS per token (Diffusion-LM's E)."""

    def __init__(self, vocab_size: int, dim: int = 32):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embedding.weight)

    def forward(self, x0: Tensor) -> Tensor:
        return unit_rms(self.embedding(x0), dims=(-1,))


class TokenHead(nn.Module):
    """Latents [B, L, dim] -> logits [B, L, V]; decode picks the argmax token (or samples at `temperature` > 0)."""

    real_valued = False  # decode gives token ids

    def __init__(self, vocab_size: int, dim: int = 32, temperature: float = 0.0):
        super().__init__()
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.head, self.temperature = nn.Linear(dim, vocab_size), temperature

    def forward(self, z: Tensor) -> Tensor:
        return self.head(z)

    def decode(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        logits = self(z)
        if self.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / self.temperature, -1)
        return torch.multinomial(probs.flatten(0, -2), 1, generator=generator).view(probs.shape[:-1])

    def nll(self, z: Tensor, x0: Tensor) -> Tensor:
        return F.cross_entropy(self(z).flatten(0, -2), x0.flatten())


class IdentityCoder(nn.Module):
    """E = D = identity, with the Gaussian decoder's MSE as nll: the latent process becomes the pixel process."""

    real_valued = True

    def forward(self, x: Tensor) -> Tensor:
        return x

    def decode(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return z

    def nll(self, z: Tensor, x0: Tensor) -> Tensor:
        return F.mse_loss(z, x0)
