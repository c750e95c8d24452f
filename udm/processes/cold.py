"""Cold diffusion (Bansal et al. 2022; seed 001, "冷之扩散"): x_t = D_t(x0) + e.

D_t is a deterministic degradation with D_0 = identity; e ~ N(0, sigma^2 I) is the noise
(sigma may be 0). Writing the noise as e = sigma * eps keeps the inverse defined at sigma = 0:

    e_hat = F_t^{-1}(x0_hat, x_t) = x_t - D_t(x0_hat)
    inverse step  x_s = D_s(x0_hat) + e_hat = x_t + D_s(x0_hat) - D_t(x0_hat)   (improved sampling)
    baseline step x_s = D_s(x0_hat) + fresh e                                 (naive sampling)

A new corruption is a subclass that implements `degrade(x0, t)` alone.
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from udm.processes.base import ForwardProcess, per_sample
from udm.processes.capabilities import Capabilities
from udm.processes.schedules import geometric


class Cold(ForwardProcess):
    """F_t(x0, e) = D_t(x0) + e with e ~ N(0, sigma^2 I); the net predicts x0 directly (L1 loss).

    The prior is D_T of a random held-out image plus `prior_noise` Gaussian noise: a fully
    degraded image keeps almost nothing, so generation needs that fresh randomness (seed 001).
    """

    def __init__(self, T: int = 50, sigma: float = 0.0, prior_noise: float = 0.002):
        super().__init__()
        if T < 1 or sigma < 0 or prior_noise < 0:
            raise ValueError(f"need T >= 1, sigma >= 0, prior_noise >= 0; got T={T}, sigma={sigma}, prior_noise={prior_noise}")
        self.T, self.sigma, self.prior_noise = T, sigma, prior_noise

    @property
    def capabilities(self) -> Capabilities:  # the mixed step's fresh noise needs Gaussian e; sigma = 0 has none
        return Capabilities(invertible=True, gaussian_noise=self.sigma > 0, variances=("blend",) if self.sigma > 0 else (),
                            extrapolates_x0=True, prior_needs_data=True)

    @abc.abstractmethod
    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        """D_t(x0) for times t [B]; D_0 must be the identity."""

    def forward(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return self.degrade(x0, t) + eps

    def inverse(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return x_t - self.degrade(x0, t)

    def sample_noise(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.sigma == 0:
            return torch.zeros_like(x0)
        return self.sigma * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def prior(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        t = torch.full((x0.shape[0],), self.T, dtype=torch.long, device=x0.device)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.degrade(x0, t) + self.prior_noise * z

    def x0_hat(self, out: Tensor, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return out.clamp(-1, 1)

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return F.l1_loss(out, x0)

    def describe(self) -> str:
        return f"{type(self).__name__}(T={self.T}, sigma={self.sigma})"


class Blur(Cold):
    """Gaussian blur of width std_t growing geometrically from std_min to std_max pixels.

    Computed in the Fourier domain of the mirror-extended image (reflecting borders), so
    D_t is exactly linear, keeps every constant image fixed and tends to the per-channel
    mean as std grows: at std_max = the image side, x_T is the mean to within ~1e-3.
    """

    def __init__(self, T: int = 50, std_min: float = 0.3, std_max: float = 28.0, **kwargs):
        super().__init__(T=T, **kwargs)
        self.register_buffer("std", geometric(std_min, std_max, T), persistent=False)

    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        H, W = x0.shape[-2:]
        ext = torch.cat([x0, x0.flip(-2)], -2)
        ext = torch.cat([ext, ext.flip(-1)], -1)  # period 2H x 2W, symmetric
        fy = torch.fft.fftfreq(2 * H, device=x0.device, dtype=torch.float64)[:, None]
        fx = torch.fft.rfftfreq(2 * W, device=x0.device, dtype=torch.float64)[None, :]
        var = per_sample(self.std[t] ** 2, x0).double()
        gain = torch.exp(-2 * math.pi**2 * var * (fy**2 + fx**2))
        out = torch.fft.irfft2(torch.fft.rfft2(ext.double()) * gain, s=(2 * H, 2 * W))
        return out[..., :H, :W].to(x0.dtype)


class Inpaint(Cold):
    """A growing masked region filled with `fill`: k(t) = round(t/T * H*W) pixels by the time t.

    order='centre' masks pixels by distance from the centre (a growing disc); 'random' by a
    fixed random order of the pixels drawn once from `seed`. At t = T every pixel is masked,
    so x_T is `fill` plus the prior's noise: the noise alone makes the samples differ.
    """

    def __init__(self, T: int = 50, image_size: int = 28, order: str = "centre", fill: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(T=T, **kwargs)
        if order not in ("centre", "random"):
            raise ValueError(f"unknown mask order {order!r}; choose 'centre' or 'random'")
        n = image_size * image_size
        if order == "centre":
            y, x = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
            c = (image_size - 1) / 2
            dist = ((y - c) ** 2 + (x - c) ** 2).flatten().double()
            order_of_pixels = torch.argsort(dist + 1e-6 * torch.arange(n), stable=True)  # ties by raster order
        else:
            order_of_pixels = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        rank = torch.empty(n, dtype=torch.long)
        rank[order_of_pixels] = torch.arange(n)
        self.image_size, self.order, self.fill = image_size, order, fill
        self.register_buffer("rank", rank.view(image_size, image_size), persistent=False)
        self.register_buffer("k", torch.round(torch.arange(T + 1, dtype=torch.float64) / T * n).long(), persistent=False)

    def mask(self, t: Tensor) -> Tensor:
        """m_t [B, 1, H, W]: 1 where masked at time t."""
        return (self.rank[None] < self.k[t].view(-1, 1, 1)).unsqueeze(1)

    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        if x0.shape[-1] != self.image_size or x0.shape[-2] != self.image_size:
            raise ValueError(f"Inpaint was built for {self.image_size}x{self.image_size} images, got {list(x0.shape[-2:])}")
        return torch.where(self.mask(t), torch.as_tensor(self.fill, dtype=x0.dtype, device=x0.device), x0)


class Pixelate(Cold):
    """Average-pool to an n_t x n_t grid and upsample back (nearest): super-resolution in reverse.

    n_t = side^(1 - t/T) falls geometrically from the image side (t = 0, the identity) to 1
    (t = T, the per-channel mean); a fractional n_t blends the two neighbouring integer
    grids, so every step degrades a little more and any T works. Pooling and upsampling
    are separable, so D_t(x) = (1 - w_t) P x P^T + w_t Q x Q^T with P, Q precomputed H x H.
    """

    def __init__(self, T: int = 50, image_size: int = 28, **kwargs):
        super().__init__(T=T, **kwargs)
        self.image_size = image_size
        n = float(image_size) ** (1 - torch.arange(T + 1, dtype=torch.float64) / T)
        lo, hi = n.floor().long(), n.ceil().long()
        self.register_buffer("coarse", torch.stack([self.pool_matrix(int(k)) for k in lo]), persistent=False)
        self.register_buffer("fine", torch.stack([self.pool_matrix(int(k)) for k in hi]), persistent=False)
        self.register_buffer("w", n - lo, persistent=False)  # weight of the finer grid

    def pool_matrix(self, side: int) -> Tensor:
        """The H x H matrix of 1-D average pooling to `side` cells followed by nearest upsampling."""
        eye = torch.eye(self.image_size, dtype=torch.float64)[:, None]
        pooled = F.interpolate(F.adaptive_avg_pool1d(eye, side), size=self.image_size, mode="nearest")
        return pooled[:, 0].T

    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        if x0.shape[-1] != self.image_size or x0.shape[-2] != self.image_size:
            raise ValueError(f"Pixelate was built for {self.image_size}x{self.image_size} images, got {list(x0.shape[-2:])}")
        P, Q = self.coarse[t].to(x0.dtype)[:, None], self.fine[t].to(x0.dtype)[:, None]
        w = per_sample(self.w[t], x0)
        return (1 - w) * (P @ x0 @ P.transpose(-1, -2)) + w * (Q @ x0 @ Q.transpose(-1, -2))
