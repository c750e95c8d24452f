"""Noise schedules of the affine Gaussian process x_t = a(u) x0 + b(u) eps on real-valued time u in [0, 1].

u = 0 is the data (a = 1, b = 0) and u = 1 the prior. A process with T grid steps reads the schedule at
u = t / T, so the integer grid t = 0..T is one view of it: discrete-time schedules (DDPM's betas, SMLD's
noise levels) are defined by their table on that grid and interpolated between its points; continuous
ones (flow matching, EDM) have closed forms. A schedule gives everything samplers need in float64:

    alpha2(u) = a(u)^2,  sigma2(u) = b(u)^2,  log_snr(u) = log(a^2 / b^2)    (decreasing in u)
    time_of(log_snr)     its inverse (log-SNR grids, EDM's sigma density, the Karras grid)
    transition(...)      b_{t|s}^2 = b_t^2 - (a_t / a_s)^2 b_s^2, the variance of q(x_t | x_s)

A schedule of one's own is one subclass that implements alpha2 and sigma2 (and, where it knows it in closed
form, time_of), plus one YAML file under udm/conf/process/ naming it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from udm.errors import UdmError


def as_time(u) -> Tensor:
    return torch.as_tensor(u, dtype=torch.float64)


def rate(y: Tensor, u: Tensor) -> Tensor:
    """dy/du of y = f(u) elementwise; 0 where y does not depend on u (a = 1 of the geometric schedules)."""
    if not y.requires_grad:
        return torch.zeros_like(u).detach()
    return torch.autograd.grad(y.sum(), u, retain_graph=True)[0].detach()


class Schedule:
    """The base: generic log-SNR, inverse (by bisection), transition variance and time derivatives."""

    variance_preserving = False  # a^2 + b^2 = 1 (what Analytic-DPM's variance and the VP bound need)
    tabulated = False  # defined by a table on the grid t = 0..T (DDPM's betas, SMLD's levels): trained on integer t

    def alpha2(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma2(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def table(self, T: int) -> tuple[Tensor, Tensor]:
        """(a^2, b^2) at the grid points t = 0..T (u = t / T); discrete schedules return their own table."""
        u = torch.arange(T + 1, dtype=torch.float64) / T
        return self.alpha2(u), self.sigma2(u)

    def log_snr(self, u: Tensor) -> Tensor:
        u = as_time(u)
        return self.alpha2(u).log() - self.sigma2(u).log()

    def time_of(self, log_snr: Tensor) -> Tensor:
        """u with log_snr(u) = log_snr, by bisection on [0, 1] (log-SNR decreases in u); schedules with a closed
        form override it. Values beyond the schedule's range give u = 0 or 1."""
        target = as_time(log_snr)
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(64):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > target  # mid is still too close to the data
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2

    def transition(self, a2_t: Tensor, b2_t: Tensor, a2_s: Tensor, b2_s: Tensor) -> Tensor:
        """b_{t|s}^2 = b_t^2 - (a_t / a_s)^2 b_s^2 for s <= t, from the squared coefficients at both times;
        schedules override it with a form free of cancellation."""
        return b2_t - a2_t / a2_s * b2_s

    def derivatives(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """(da/du, db/du), by automatic differentiation of a = sqrt(alpha2), b = sqrt(sigma2)."""
        with torch.enable_grad():
            u = as_time(u).detach().clone().requires_grad_(True)
            a, b = self.alpha2(u).sqrt(), self.sigma2(u).sqrt()
            return rate(a, u), rate(b, u)

    def describe(self) -> str:
        return type(self).__name__


class DiscreteVP(Schedule):
    """A variance-preserving schedule given by alphabar on the grid t = 0..T (DDPM's betas), with log alphabar
    interpolated linearly between grid points for real-valued times."""

    variance_preserving = True
    tabulated = True

    def __init__(self, alphabar: Tensor, name: str):
        self.alphabar, self.name, self.T = alphabar.double(), name, len(alphabar) - 1
        self.log_alphabar = self.alphabar.log()

    def table(self, T: int) -> tuple[Tensor, Tensor]:
        if T != self.T:
            raise UdmError(f"the {self.name} schedule is defined on T = {self.T} steps, not {T}")
        return self.alphabar, 1 - self.alphabar

    def interpolated(self, u: Tensor) -> Tensor:
        t = (as_time(u) * self.T).clamp(0, self.T)
        low = t.floor().long().clamp(max=self.T - 1)
        w = t - low
        table = self.log_alphabar.to(t.device)
        return table[low] * (1 - w) + table[low + 1] * w

    def alpha2(self, u):
        return self.interpolated(u).exp()

    def sigma2(self, u):
        return -torch.expm1(self.interpolated(u))

    def transition(self, a2_t, b2_t, a2_s, b2_s):
        return 1 - a2_t / a2_s  # 1 - alphabar_t / alphabar_s: DDPM's beta of the jump s -> t

    def describe(self) -> str:
        return f"vp-{self.name}"


def linear_alphabar(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """alphabar_0..T for betas linear from beta_1 = beta_start to beta_T = beta_end (DDPM)."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def scaled_linear_alphabar(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """alphabar_0..T for sqrt(beta) linear from sqrt(beta_start) to sqrt(beta_end) (latent diffusion's
    "scaled_linear" betas, as diffusers names them)."""
    betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64) ** 2
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def cosine_alphabar(T: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """alphabar_0..T of Improved DDPM: f(t) = cos((t/T + s) / (1 + s) * pi/2)^2, betas clipped at 0.999."""
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def vp_linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteVP:
    """DDPM's linear betas on T steps."""
    return DiscreteVP(linear_alphabar(T, beta_start, beta_end), "linear")


def vp_cosine(T: int = 1000) -> DiscreteVP:
    """Improved DDPM's cosine schedule on T steps."""
    return DiscreteVP(cosine_alphabar(T), "cosine")


class Geometric(Schedule):
    """Variance exploding, a = 1 and b = sigma: sigma geometric from sigma_min at u = u_min to sigma_max at u = 1
    (SMLD's noise levels, EDM's sigma range), and sigma^2 linear from 0 at u = 0 to sigma_min^2 at u_min, so
    that u = 0 stays the data. log sigma is affine in u above u_min: grid time is EDM's c_noise up to scale."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, u_min: float = 1e-3):
        if not 0 < sigma_min < sigma_max:
            raise UdmError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not 0 < u_min < 1:
            raise UdmError(f"u_min (where sigma reaches sigma_min) must lie in (0, 1), got {u_min}")
        self.sigma_min, self.sigma_max, self.u_min = float(sigma_min), float(sigma_max), float(u_min)
        self.log_min, self.log_max = math.log(sigma_min), math.log(sigma_max)

    def sigma(self, u: Tensor) -> Tensor:
        u = as_time(u)
        above = (self.log_min + (u - self.u_min) / (1 - self.u_min) * (self.log_max - self.log_min)).exp()
        below = self.sigma_min * (u / self.u_min).clamp(min=0).sqrt()
        return torch.where(u >= self.u_min, above, below)

    def alpha2(self, u):
        return torch.ones_like(as_time(u))

    def sigma2(self, u):
        return self.sigma(u) ** 2

    def time_of_sigma(self, sigma: Tensor) -> Tensor:
        sigma = as_time(sigma)
        above = self.u_min + (sigma.log() - self.log_min) / (self.log_max - self.log_min) * (1 - self.u_min)
        below = self.u_min * (sigma / self.sigma_min) ** 2
        return torch.where(sigma >= self.sigma_min, above, below).clamp(0, 1)

    def time_of(self, log_snr):
        return self.time_of_sigma((-as_time(log_snr) / 2).exp())

    def transition(self, a2_t, b2_t, a2_s, b2_s):
        return b2_t - b2_s

    def describe(self) -> str:
        return f"geometric sigma {self.sigma_min:g}..{self.sigma_max:g}"


def geometric(start: float, end: float, T: int) -> Tensor:
    """[0, start, ..., end]: T values spaced evenly in log between start and end, after a 0 for t = 0 (SMLD's noise
    levels, blur's widths)."""
    values = torch.exp(torch.linspace(math.log(start), math.log(end), T, dtype=torch.float64))
    return torch.cat([torch.zeros(1, dtype=torch.float64), values])


class DiscreteVE(Geometric):
    """SMLD's T noise levels (sigma_1 = sigma_min .. sigma_T = sigma_max, geometric) as a table on t = 0..T; the
    same Geometric schedule with u_min = 1/T between grid points."""

    tabulated = True

    def __init__(self, T: int, sigma_min: float = 0.01, sigma_max: float = 10.0):
        super().__init__(sigma_min, sigma_max, u_min=1 / T if T > 1 else 0.5)
        self.T = T

    def table(self, T: int) -> tuple[Tensor, Tensor]:
        if T != self.T:
            raise UdmError(f"these noise levels are defined on T = {self.T} steps, not {T}")
        return torch.ones(T + 1, dtype=torch.float64), geometric(self.sigma_min, self.sigma_max, T) ** 2


class Flow(Schedule):
    """Flow matching / rectified flow (Lipman et al. 2023, Liu et al. 2023): x_t = (1 - u) x0 + u eps."""

    def alpha2(self, u):
        return (1 - as_time(u)) ** 2

    def sigma2(self, u):
        return as_time(u) ** 2

    def time_of(self, log_snr):
        return torch.sigmoid(-as_time(log_snr) / 2)  # a / b = (1 - u) / u = exp(log_snr / 2)

    def derivatives(self, u):
        u = as_time(u)
        return -torch.ones_like(u), torch.ones_like(u)

    def describe(self) -> str:
        return "flow"


class CosineVP(Schedule):
    """The continuous cosine schedule a = cos(pi u / 2), b = sin(pi u / 2) (the limit of Improved DDPM's without its
    offset); log-SNR = -2 log tan(pi u / 2)."""

    variance_preserving = True

    def alpha2(self, u):
        return torch.cos(as_time(u) * math.pi / 2) ** 2

    def sigma2(self, u):
        return torch.sin(as_time(u) * math.pi / 2) ** 2

    def time_of(self, log_snr):
        return torch.atan((-as_time(log_snr) / 2).exp()) * 2 / math.pi

    def describe(self) -> str:
        return "vp-cosine-continuous"


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0, u_min: float = 1e-3) -> Geometric:
    """EDM's sigma range (Karras et al. 2022): a = 1, b = sigma in [0.002, 80]."""
    return Geometric(sigma_min, sigma_max, u_min)
