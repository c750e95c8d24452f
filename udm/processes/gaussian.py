"""Variance-preserving Gaussian diffusion (DDPM, DDIM), DESIGN.md section 2.

Notation (DDPM paper, seed 002): alphabar_t = prod_{i<=t} (1 - beta_i), alphabar_0 = 1,
a_t = sqrt(alphabar_t), b_t = sqrt(1 - alphabar_t), and

    x_t = F_t(x0, eps) = a_t x0 + b_t eps,   eps = F_t^{-1}(x0, x_t) = (x_t - a_t x0) / b_t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from udm.processes.base import ForwardProcess, per_sample
from udm.processes.capabilities import Capabilities

PARAMETRIZATIONS = ("eps", "x0", "v")


def linear_alphabar(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """alphabar_0..T for betas linear from beta_1 = beta_start to beta_T = beta_end (DDPM)."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def cosine_alphabar(T: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """alphabar_0..T of Improved DDPM: f(t) = cos((t/T + s) / (1 + s) * pi/2)^2, betas clipped at 0.999."""
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


SCHEDULES = {"linear": linear_alphabar, "cosine": cosine_alphabar}


class Gaussian(ForwardProcess):
    """VP Gaussian diffusion; the network predicts eps (default), x0 or v = a_t eps - b_t x0."""

    capabilities = Capabilities(invertible=True, gaussian_noise=True, variances=("posterior", "beta"), score=True,
                                analytic_variance=True, likelihood="bits/dim", extrapolates_x0=True)

    def __init__(
        self,
        T: int = 1000,
        schedule: str = "linear",
        parametrization: str = "eps",
        clip_denoised: bool = True,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"unknown parametrization {parametrization!r}; choose one of {list(PARAMETRIZATIONS)}")
        if T < 1:
            raise ValueError(f"T must be a positive number of steps, got {T}")
        self.T, self.schedule, self.parametrization = T, schedule, parametrization
        self.clip_denoised = clip_denoised
        alphabar = linear_alphabar(T, beta_start, beta_end) if schedule == "linear" else cosine_alphabar(T)
        self.register_buffer("alphabar", alphabar, persistent=False)
        self.register_buffer("a", alphabar.sqrt(), persistent=False)
        self.register_buffer("b", (1 - alphabar).sqrt(), persistent=False)

    def forward(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return per_sample(self.a[t], x0) * x0 + per_sample(self.b[t], x0) * eps

    def inverse(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return (x_t - per_sample(self.a[t], x_t) * x0) / per_sample(self.b[t], x_t)

    def sample_noise(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def prior(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_noise(x0, generator)

    def x0_hat(self, out: Tensor, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        a, b = per_sample(self.a[t], x_t), per_sample(self.b[t], x_t)
        if self.parametrization == "eps":
            x0 = (x_t - b * out) / a
        elif self.parametrization == "v":
            x0 = a * x_t - b * out
        else:
            x0 = out
        return x0.clamp(-1, 1) if self.clip_denoised else x0

    def eps_hat(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The net's estimate of eps, whatever it predicts (v = a eps - b x0 gives eps = b x_t + a v)."""
        a, b = per_sample(self.a[t], x_t), per_sample(self.b[t], x_t)
        if self.parametrization == "eps":
            return out
        if self.parametrization == "v":
            return b * x_t + a * out
        return (x_t - a * out) / b

    def score(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """grad log p_t(x_t) = -eps_theta / b_t (t >= 1)."""
        return -self.eps_hat(out, x_t, t) / per_sample(self.b[t], x_t)

    def noise_scale(self, t: Tensor) -> Tensor:
        return self.b[t]

    def solver_time(self, t: Tensor) -> Tensor:
        """DPM-Solver's lambda_t = log(a_t / b_t) (+inf at t = 0)."""
        return self.a[t].log() - self.b[t].log()

    def target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """What the network regresses onto: eps, x0 or v = a_t eps - b_t x0."""
        if self.parametrization == "eps":
            return eps
        if self.parametrization == "v":
            return per_sample(self.a[t], x0) * eps - per_sample(self.b[t], x0) * x0
        return x0

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return F.mse_loss(out, self.target(x0, t, eps))

    def noise_ratio(self, t: Tensor, s: Tensor, eta: float, variance: str = "posterior") -> tuple[Tensor, Tensor]:
        """Mixed-step coefficients (r_eps, r_z) of x_s = a_s x0_hat + b_s (r_eps eps_hat + r_z z).

        'posterior' (DDIM, Song et al. 2021, eq. 16): sigma_t^2 = eta^2 * (1 - alphabar_s) / (1 - alphabar_t)
        * (1 - alphabar_t / alphabar_s); eta = 1 is DDPM's posterior variance, eta = 0 deterministic
        DDIM. The step is x_s = a_s x0_hat + sqrt(b_s^2 - sigma_t^2) eps_hat + sigma_t z, i.e.
        r_eps = sqrt(b_s^2 - sigma_t^2) / b_s and r_z = sigma_t / b_s.
        'beta' keeps the posterior mean (eta = 1 direction) and draws noise with
        sigma_t^2 = eta^2 (1 - alphabar_t / alphabar_s), DDPM's sigma_t^2 = beta_t when s = t - 1.
        Analytic-DPM's variance is a step rule of its own (udm.samplers.analytic).
        """
        if variance not in self.capabilities.variances:
            raise ValueError(f"unknown variance {variance!r}; choose one of {list(self.capabilities.variances)}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        ab_t, ab_s = self.alphabar[t], self.alphabar[s]
        b2_s = 1 - ab_s
        beta_ts = 1 - ab_t / ab_s  # the one-jump beta from s to t
        posterior_var = b2_s / (1 - ab_t) * beta_ts
        safe_b2_s = torch.where(b2_s > 0, b2_s, torch.ones_like(b2_s))
        if variance == "posterior":
            r2 = (eta**2 * posterior_var / safe_b2_s).clamp(max=1.0)
            r_eps, r_z = (1 - r2).sqrt(), r2.sqrt()
        else:
            r_eps = (1 - posterior_var / safe_b2_s).clamp(min=0.0).sqrt()
            r_z = eta * (beta_ts / safe_b2_s).sqrt()
        # at s = 0, F_0 ignores eps (b_0 = 0): x_0 = x0_hat
        zero = b2_s <= 0
        return torch.where(zero, 0.0, r_eps), torch.where(zero, 0.0, r_z)

    def describe(self) -> str:
        return f"Gaussian(T={self.T}, schedule={self.schedule}, parametrization={self.parametrization})"
