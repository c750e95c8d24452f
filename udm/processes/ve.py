"""Variance-exploding Gaussian diffusion, the process behind SMLD / NCSN (seed 003).

    x_t = F_t(x0, eps) = x0 + sigma_t eps,   sigma_0 = 0,   sigma_1..sigma_T geometric from sigma_min to sigma_max

The net predicts eps (denoising score matching: score(x_t) = -eps / sigma_t), the prior is
N(0, sigma_max^2), and the mixed step with eta = 1 is the ancestral step of the VE posterior
q(x_s | x_t, x0) = N(x0 + sigma_s^2/sigma_t^2 (x_t - x0), sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2).
Annealed Langevin dynamics and predictor-corrector sampling (udm.samplers) use `score`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from udm.processes.base import ForwardProcess, per_sample
from udm.processes.capabilities import Capabilities


def geometric_sigmas(T: int, sigma_min: float, sigma_max: float) -> Tensor:
    """sigma_0 = 0 then T levels geometric from sigma_min (t = 1) to sigma_max (t = T)."""
    levels = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), T, dtype=torch.float64))
    return torch.cat([torch.zeros(1, dtype=torch.float64), levels])


class VarianceExploding(ForwardProcess):
    capabilities = Capabilities(invertible=True, gaussian_noise=True, variances=("posterior",), score=True, extrapolates_x0=True)

    def __init__(self, T: int = 100, sigma_min: float = 0.01, sigma_max: float = 10.0, clip_denoised: bool = False):
        super().__init__()
        if T < 1:
            raise ValueError(f"T must be a positive number of noise levels, got {T}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.T, self.sigma_min, self.sigma_max, self.clip_denoised = T, sigma_min, sigma_max, clip_denoised
        self.register_buffer("sigma", geometric_sigmas(T, sigma_min, sigma_max), persistent=False)

    def forward(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return x0 + per_sample(self.sigma[t], x0) * eps

    def inverse(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return (x_t - x0) / per_sample(self.sigma[t], x_t)

    def sample_noise(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def prior(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.sigma_max * self.sample_noise(x0, generator)

    def x0_hat(self, out: Tensor, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x0 = x_t - per_sample(self.sigma[t], x_t) * out
        return x0.clamp(-1, 1) if self.clip_denoised else x0

    def score(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """grad log p_t(x_t) = -eps_theta / sigma_t."""
        return -out / per_sample(self.sigma[t], x_t)

    def noise_scale(self, t: Tensor) -> Tensor:
        """The std of the noise in x_t (what Langevin step sizes scale with)."""
        return self.sigma[t]

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return F.mse_loss(out, eps)

    def noise_ratio(self, t: Tensor, s: Tensor, eta: float, variance: str = "posterior") -> tuple[Tensor, Tensor]:
        """r^2 = eta^2 (sigma_t^2 - sigma_s^2) / sigma_t^2: eta = 1 is the posterior (ancestral) step, 0 deterministic."""
        if variance not in self.capabilities.variances:
            raise ValueError(f"VarianceExploding supports only variance='posterior', got {variance!r}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        s2_t, s2_s = self.sigma[t] ** 2, self.sigma[s] ** 2
        r2 = (eta**2 * (s2_t - s2_s) / s2_t).clamp(max=1.0)
        zero = s2_s <= 0  # F_0 ignores eps: the last step returns x0_hat
        return torch.where(zero, 0.0, (1 - r2).sqrt()), torch.where(zero, 0.0, r2.sqrt())

    def solver_time(self, t: Tensor) -> Tensor:
        """-log sigma_t (+inf at t = 0, where sigma_0 = 0)."""
        return -self.sigma[t].log()

    def describe(self) -> str:
        return f"VarianceExploding(T={self.T}, sigma={self.sigma_min}..{self.sigma_max})"
