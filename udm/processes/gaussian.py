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

from udm.errors import UdmError
from udm.processes.base import ForwardProcess, expand_as

PARAMETRIZATIONS = ("eps", "x0", "v")
VARIANCES = ("ddim", "beta", "analytic")


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

    noise_is_normal = True
    # Analytic-DPM's clip of the last noisy step: (s, max sigma) while udm.analytic.sample runs
    sigma_cap: tuple[int, float] | None = None

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
        self.register_buffer("eps_moments", None, persistent=False)  # Gamma_0..T of Analytic-DPM, see set_eps_moments

    def forward(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return expand_as(self.a[t], x0) * x0 + expand_as(self.b[t], x0) * eps

    def inverse(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return (x_t - expand_as(self.a[t], x_t) * x0) / expand_as(self.b[t], x_t)

    def sample_noise(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def prior(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_noise(x0, generator)

    def x0_hat(self, out: Tensor, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        a, b = expand_as(self.a[t], x_t), expand_as(self.b[t], x_t)
        if self.parametrization == "eps":
            x0 = (x_t - b * out) / a
        elif self.parametrization == "v":
            x0 = a * x_t - b * out
        else:
            x0 = out
        return x0.clamp(-1, 1) if self.clip_denoised else x0

    def eps_hat(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The net's estimate of eps, whatever it predicts (v = a eps - b x0 gives eps = b x_t + a v)."""
        a, b = expand_as(self.a[t], x_t), expand_as(self.b[t], x_t)
        if self.parametrization == "eps":
            return out
        if self.parametrization == "v":
            return b * x_t + a * out
        return (x_t - a * out) / b

    def score(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """grad log p_t(x_t) = -eps_theta / b_t (t >= 1)."""
        return -self.eps_hat(out, x_t, t) / expand_as(self.b[t], x_t)

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
            return expand_as(self.a[t], x0) * eps - expand_as(self.b[t], x0) * x0
        return x0

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return F.mse_loss(out, self.target(x0, t, eps))

    def noise_ratio(self, t: Tensor, s: Tensor, eta: float, variance: str = "ddim") -> tuple[Tensor, Tensor]:
        """Mixed-step coefficients (r_eps, r_z) of x_s = a_s x0_hat + b_s (r_eps eps_hat + r_z z).

        'ddim' (Song et al. 2021, eq. 16): sigma_t^2 = eta^2 * (1 - alphabar_s) / (1 - alphabar_t)
        * (1 - alphabar_t / alphabar_s); eta = 1 is DDPM's posterior variance, eta = 0 deterministic
        DDIM. The step is x_s = a_s x0_hat + sqrt(b_s^2 - sigma_t^2) eps_hat + sigma_t z, i.e.
        r_eps = sqrt(b_s^2 - sigma_t^2) / b_s and r_z = sigma_t / b_s.
        'beta' keeps the posterior mean (eta = 1 direction) and draws noise with
        sigma_t^2 = eta^2 (1 - alphabar_t / alphabar_s), DDPM's sigma_t^2 = beta_t when s = t - 1.
        'analytic' keeps the mean of the eta-member of the DDIM family, lambda^2 = eta^2 * posterior
        variance, and draws noise with Analytic-DPM's optimal sigma^2 (see `analytic_variance`).
        """
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {list(VARIANCES)}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        ab_t, ab_s = self.alphabar[t], self.alphabar[s]
        b2_s = 1 - ab_s
        beta_ts = 1 - ab_t / ab_s  # the one-jump beta from s to t
        posterior_var = b2_s / (1 - ab_t) * beta_ts
        safe_b2_s = torch.where(b2_s > 0, b2_s, torch.ones_like(b2_s))
        if variance == "ddim":
            r2 = (eta**2 * posterior_var / safe_b2_s).clamp(max=1.0)
            r_eps, r_z = (1 - r2).sqrt(), r2.sqrt()
        elif variance == "beta":
            r_eps = (1 - posterior_var / safe_b2_s).clamp(min=0.0).sqrt()
            r_z = eta * (beta_ts / safe_b2_s).sqrt()
        else:
            lambda2, sigma2 = self.analytic_variance(t, s, eta)
            if self.sigma_cap is not None:
                cap_s, max_sigma = self.sigma_cap
                sigma2 = torch.where(s == cap_s, sigma2.clamp(max=max_sigma**2), sigma2)
            r_eps = ((b2_s - lambda2) / safe_b2_s).clamp(min=0.0).sqrt()
            r_z = (sigma2 / safe_b2_s).sqrt()
        # at s = 0, F_0 ignores eps (b_0 = 0): x_0 = x0_hat
        zero = b2_s <= 0
        return torch.where(zero, 0.0, r_eps), torch.where(zero, 0.0, r_z)

    def set_eps_moments(self, gamma: Tensor) -> None:
        """Attach Gamma_t = E ||eps_theta(x_t, t)||^2 / d for t = 0..T (udm.analytic estimates it).

        A non-persistent buffer: it follows the device, never enters checkpoints, and is
        what variance='analytic' reads.
        """
        gamma = torch.as_tensor(gamma, dtype=torch.float64)
        if gamma.shape != (self.T + 1,):
            raise ValueError(f"eps moments must hold one value per t = 0..T ({self.T + 1} values), got shape {list(gamma.shape)}")
        if not torch.isfinite(gamma).all() or (gamma < 0).any():
            raise ValueError("eps moments are mean squares: they must be finite and >= 0")
        self.eps_moments = gamma.to(self.alphabar.device)

    def analytic_variance(self, t: Tensor, s: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
        """(lambda^2, sigma*^2) of Analytic-DPM (Bao et al. 2022) for the jump t -> s < t.

        The reverse step of the DDIM family, q_lambda(x_s | x_t, x0) = N(a_s x0 + sqrt(b_s^2 - lambda^2)
        (x_t - a_t x0) / b_t, lambda^2 I) with lambda^2 = eta^2 * posterior variance, has the
        optimal variance (their Theorem 1, on a shorter trajectory for s < t - 1)

            sigma*^2 = lambda^2 + (sqrt(b_t^2 / alpha_{t|s}) - sqrt(b_s^2 - lambda^2))^2 (1 - Gamma_t),

        alpha_{t|s} = alphabar_t / alphabar_s and Gamma_t = b_t^2 E||grad log q_t||^2 / d, estimated
        as E||eps_theta||^2 / d. Written with the data's variance given x_t,
        Var(x0 | x_t) = b_t^2 / a_t^2 (1 - Gamma_t), it is

            sigma*^2 = lambda^2 + (a_s - sqrt((b_s^2 - lambda^2) a_t^2 / b_t^2))^2 Var(x0 | x_t),

        i.e. the fixed-x0_hat step plus the spread of an x0_hat drawn with variance Var(x0 | x_t)
        (DESIGN.md's sigmabar_t^2), which enters x_s with the factor a_s - sqrt(b_s^2 - lambda^2) a_t / b_t.
        Var(x0 | x_t) is clipped to [0, ((b - a) / 2)^2 = 1] for data in [a, b] = [-1, 1]
        (their Theorem 2: lambda^2 <= sigma*^2 <= the bound for bounded data); the upper clip
        applies when clip_denoised declares the data bounded. eta = 1 is Analytic-DDPM, eta = 0
        Analytic-DDIM.
        """
        if self.eps_moments is None:
            raise UdmError(
                "variance='analytic' needs Analytic-DPM's moments Gamma_t = E||eps_theta||^2 / d of this model: "
                "sample with udm-sample sampler=analytic_ddim (or analytic_ddpm), which estimates and caches them, "
                "or call process.set_eps_moments(udm.analytic.eps_moments(process, net, train_data)) first"
            )
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"Analytic-DPM's family needs 0 <= eta <= 1, got {eta}")
        ab_t, ab_s = self.alphabar[t], self.alphabar[s]
        b2_t, b2_s = 1 - ab_t, 1 - ab_s
        lambda2 = eta**2 * b2_s / b2_t * (1 - ab_t / ab_s)
        x0_var = (b2_t / ab_t * (1 - self.eps_moments[t])).clamp(min=0.0)
        if self.clip_denoised:
            x0_var = x0_var.clamp(max=1.0)
        coef = (ab_s.sqrt() - ((b2_s - lambda2).clamp(min=0.0) * ab_t / b2_t).sqrt()) ** 2
        return lambda2, lambda2 + coef * x0_var

    def describe(self) -> str:
        return f"Gaussian(T={self.T}, schedule={self.schedule}, parametrization={self.parametrization})"
