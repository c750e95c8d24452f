"""The affine Gaussian process: VP, VE, flow matching and EDM as one process over a schedule (DESIGN.md section 2).

    x_t = F_t(x0, eps) = a_t x0 + b_t eps,   eps = F_t^{-1}(x0, x_t) = (x_t - a_t x0) / b_t,   eps ~ N(0, I)

with (a_t, b_t) from a `udm.processes.schedules.Schedule` at u = t / T. Time t is in grid units: a LongTensor
on the integer grid 0..T (the coefficients come from a table, bit for bit the discrete schedules' values) or a
float tensor anywhere in [0, T] (continuous-time grids and training densities; the schedule's closed form).

What the net predicts (`parametrization`):
    eps        eps                                   x0 = (x_t - b eps) / a
    x0         x0
    v          a eps - b x0 (Salimans & Ho 2022)      x0 = (a x_t - b v) / (a^2 + b^2)
    velocity   dx_t/du = a' x0 + b' eps (flow matching's u_t; eps - x0 on the flow schedule)
    edm        F of EDM's preconditioning (Karras et al. 2022): with x~ = x_t / a and sigma = b / a,
               x0 = c_skip x~ + c_out F,  c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2)

With `scale_input` the net sees c_in x_t, c_in = 1 / sqrt(a^2 sd^2 + b^2) (EDM's c_in, written for every schedule),
so its input has about unit variance at every noise level, and its time input is t in grid units, an affine
function of log sigma on a geometric schedule (EDM's c_noise up to scale) and of u on the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from udm.errors import UdmError
from udm.processes.base import ForwardProcess, per_sample, predict
from udm.processes.capabilities import Capabilities
from udm.processes.densities import check_density, quantiles, times, x0_weight
from udm.processes.schedules import Schedule

PARAMETRIZATIONS = ("eps", "x0", "v", "velocity", "edm")


class Affine(ForwardProcess):
    """x_t = a_t x0 + b_t eps over `schedule`; see the module docstring for every knob."""

    def __init__(
        self,
        schedule: Schedule,
        T: int = 1000,
        parametrization: str = "eps",
        clip_denoised: bool = False,
        sigma_data: float = 0.5,
        scale_input: bool = True,
        time_density: str = "uniform",
        density_mean: float = 0.0,
        density_std: float = 1.0,
        t_sampling: str = "iid",
        loss_weight: str = "none",
        snr_gamma: float = 5.0,
    ):
        super().__init__()
        if parametrization not in PARAMETRIZATIONS:
            raise UdmError(f"unknown parametrization {parametrization!r}; choose one of {list(PARAMETRIZATIONS)}")
        if type(T) is not int or T < 1:
            raise UdmError(f"T must be a positive number of grid steps, got {T!r}")
        if not sigma_data > 0:
            raise UdmError(f"sigma_data (the data's standard deviation) must be > 0, got {sigma_data}")
        check_density(time_density, t_sampling, loss_weight, snr_gamma, density_mean, density_std)
        self.schedule, self.T, self.parametrization = schedule, T, parametrization
        self.clip_denoised, self.sigma_data, self.scale_input = clip_denoised, float(sigma_data), scale_input
        self.time_density, self.density_mean, self.density_std = time_density, float(density_mean), float(density_std)
        self.t_sampling, self.loss_weight, self.snr_gamma = t_sampling, loss_weight, float(snr_gamma)
        alpha2, sigma2 = schedule.table(T)
        self.register_buffer("alphabar", alpha2, persistent=False)  # a_t^2 on the grid (alphabar_t for VP schedules)
        self.register_buffer("sigma2", sigma2, persistent=False)
        self.register_buffer("a", alpha2.sqrt(), persistent=False)
        self.register_buffer("b", sigma2.sqrt(), persistent=False)
        if parametrization in ("eps", "edm") and float(self.a[T]) < 1e-8:
            raise UdmError(f"parametrization={parametrization!r} gives x0 = (x_t - b eps) / a (edm: through sigma = b / a), "
                           f"undefined where a = {float(self.a[T]):.1e} at t = T on the {schedule.describe()} schedule, "
                           "where every sampler starts; use velocity, v or x0")

    @property
    def capabilities(self) -> Capabilities:
        vp = self.schedule.variance_preserving
        return Capabilities(invertible=True, gaussian_noise=True, variances=("posterior", "beta"), score=True,
                            analytic_variance=vp, likelihood="bits/dim" if vp else None, extrapolates_x0=True,
                            continuous_time=True)

    # --- the schedule at a time in grid units -------------------------------------------------------------
    def squares(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t^2, b_t^2), float64: from the grid's table for integer t, the schedule's closed form otherwise."""
        if not t.is_floating_point():
            return self.alphabar[t], self.sigma2[t]
        u = t.double() / self.T
        return self.schedule.alpha2(u), self.schedule.sigma2(u)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t, b_t), float64."""
        if not t.is_floating_point():
            return self.a[t], self.b[t]
        a2, b2 = self.squares(t)
        return a2.sqrt(), b2.sqrt()

    def sigma_at(self, t: Tensor) -> Tensor:
        """sigma_t = b_t / a_t, the noise level of x_t / a_t = x0 + sigma eps (EDM's and k-diffusion's variable)."""
        a, b = self.coefficients(t)
        return b / a

    def time_of_sigma(self, sigma: Tensor) -> Tensor:
        """The real-valued time (grid units, float64) where b / a = sigma."""
        return self.T * self.schedule.time_of(-2 * torch.as_tensor(sigma, dtype=torch.float64).log())

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(da/du, db/du) at u = t / T."""
        return self.schedule.derivatives(t.double() / self.T)

    # --- the forward process ------------------------------------------------------------------------------
    def forward(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        a, b = self.coefficients(t)
        return per_sample(a, x0) * x0 + per_sample(b, x0) * eps

    def inverse(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, b = self.coefficients(t)
        return (x_t - per_sample(a, x_t) * x0) / per_sample(b, x_t)

    def sample_noise(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    @property
    def prior_std(self) -> float:
        """The std of x_T ~ N(0, std^2 I), taking a_T x0 as negligible (it is 0 for flow, ~0.006 for DDPM's linear
        betas): 1 for variance-preserving schedules, b_T otherwise."""
        return 1.0 if self.schedule.variance_preserving else float(self.b[self.T])

    def prior(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        eps = self.sample_noise(x0, generator)
        return eps if self.schedule.variance_preserving else self.prior_std * eps

    # --- what the net sees and predicts -------------------------------------------------------------------
    def input_scale(self, t: Tensor) -> Tensor:
        """c_in = 1 / sqrt(a_t^2 sigma_data^2 + b_t^2)."""
        a2, b2 = self.squares(t)
        return (a2 * self.sigma_data**2 + b2).rsqrt()

    def predict(self, model, x_t: Tensor, t: Tensor, cond=None):
        if not self.scale_input:
            return predict(model, x_t, t, cond)
        return predict(model, per_sample(self.input_scale(t), x_t) * x_t, t, cond)

    def edm_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a, c_skip, c_out) of EDM's preconditioning at t, written on x~ = x_t / a with sigma = b / a."""
        a, b = self.coefficients(t)
        sigma, sd2 = b / a, self.sigma_data**2
        return a, sd2 / (sigma**2 + sd2), sigma * self.sigma_data / (sigma**2 + sd2).sqrt()

    def x0_hat(self, out: Tensor, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x0 = self.predicted_x0(out, x_t, t)
        return x0.clamp(-1, 1) if self.clip_denoised else x0

    def predicted_x0(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        if self.parametrization == "x0":
            return out
        a, b = self.coefficients(t)
        if self.parametrization == "eps":
            return (x_t - per_sample(b, x_t) * out) / per_sample(a, x_t)
        if self.parametrization == "v":
            if self.schedule.variance_preserving:  # a^2 + b^2 = 1
                return per_sample(a, x_t) * x_t - per_sample(b, x_t) * out
            return (per_sample(a, x_t) * x_t - per_sample(b, x_t) * out) / per_sample(a**2 + b**2, x_t)
        if self.parametrization == "velocity":
            da, db = self.derivatives(t)
            det = a * db - da * b
            return (per_sample(db, x_t) * x_t - per_sample(b, x_t) * out) / per_sample(det, x_t)
        a, c_skip, c_out = self.edm_coefficients(t)
        return per_sample(c_skip / a, x_t) * x_t + per_sample(c_out, x_t) * out

    def eps_hat(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The net's estimate of eps, whatever it predicts."""
        if self.parametrization == "eps":
            return out
        a, b = self.coefficients(t)
        if self.parametrization == "v" and self.schedule.variance_preserving:
            return per_sample(b, x_t) * x_t + per_sample(a, x_t) * out
        return (x_t - per_sample(a, x_t) * self.predicted_x0(out, x_t, t)) / per_sample(b, x_t)

    def score(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """grad log p_t(x_t) = -eps_theta / b_t (t > 0)."""
        return -self.eps_hat(out, x_t, t) / per_sample(self.coefficients(t)[1], x_t)

    def noise_scale(self, t: Tensor) -> Tensor:
        return self.coefficients(t)[1]

    def solver_time(self, t: Tensor) -> Tensor:
        """DPM-Solver's lambda_t = log(a_t / b_t) (+inf at t = 0)."""
        a, b = self.coefficients(t)
        return a.log() - b.log()

    def x0_reaching(self, x_t: Tensor, t: Tensor, x_s: Tensor, s: Tensor) -> Tensor:
        """The x0 whose inverse step from (x_t, t) lands on x_s at s < t: x_s = a_s x0 + b_s (x_t - a_t x0) / b_t,
        so x0 = (x_s - (b_s / b_t) x_t) / (a_s - a_t b_s / b_t) (progressive distillation's target)."""
        (a_t, b_t), (a_s, b_s) = self.coefficients(t), self.coefficients(s)
        ratio = b_s / b_t
        return (x_s - per_sample(ratio, x_t) * x_t) / per_sample(a_s - a_t * ratio, x_t)

    # --- training -----------------------------------------------------------------------------------------
    def sample_t(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
        """Training times: on a schedule defined by its table on the grid (DDPM's, SMLD's), t ~ U{1..T} for the
        uniform i.i.d. density, as the discrete models were trained; else real-valued times t = T u with u from
        `time_density` and `t_sampling` (udm.processes.densities)."""
        if self.time_density == "uniform" and self.t_sampling == "iid" and self.schedule.tabulated:
            return torch.randint(1, self.T + 1, (n,), device=device, generator=generator)
        q = quantiles(n, self.t_sampling, device, generator)
        u = times(q, self.time_density, self.schedule, self.density_mean, self.density_std)
        return (u * self.T).clamp(min=1e-9 * self.T)

    def target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """What the network regresses onto for the pair (x0, eps) at t."""
        if self.parametrization == "eps":
            return eps
        if self.parametrization == "x0":
            return x0
        a, b = self.coefficients(t)
        if self.parametrization == "v":
            return per_sample(a, x0) * eps - per_sample(b, x0) * x0
        if self.parametrization == "velocity":
            da, db = self.derivatives(t)
            return per_sample(da, x0) * x0 + per_sample(db, x0) * eps
        a, c_skip, c_out = self.edm_coefficients(t)
        x_tilde = x0 + per_sample(b / a, x0) * eps
        return (x0 - per_sample(c_skip, x0) * x_tilde) / per_sample(c_out, x0)

    def error_scale(self, t: Tensor) -> Tensor:
        """c_t with ||out - target||^2 = c_t ||x0_hat - x0||^2 for this parametrization (float64)."""
        a, b = self.coefficients(t)
        if self.parametrization == "eps":
            return a**2 / b**2
        if self.parametrization == "x0":
            return torch.ones_like(a)
        if self.parametrization == "v":
            return (a**2 + b**2) ** 2 / b**2
        if self.parametrization == "velocity":
            da, db = self.derivatives(t)
            return ((a * db - da * b) / b) ** 2
        return 1 / self.edm_coefficients(t)[2] ** 2

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        if self.loss_weight == "none":
            return F.mse_loss(out, self.target(x0, t, eps))
        a, b = self.coefficients(t)
        weight = x0_weight(self.loss_weight, a**2 / b**2, self.sigma_data, self.snr_gamma) / self.error_scale(t)
        per_item = (out - self.target(x0, t, eps)).pow(2).flatten(1).mean(1)
        return (weight.to(per_item.dtype) * per_item).mean()

    # --- the mixed step -----------------------------------------------------------------------------------
    def noise_ratio(self, t: Tensor, s: Tensor, eta: float, variance: str = "posterior") -> tuple[Tensor, Tensor]:
        """Mixed-step coefficients (r_eps, r_z) of x_s = a_s x0_hat + b_s (r_eps eps_hat + r_z z).

        'posterior' (DDIM, Song et al. 2021, eq. 16, for any affine schedule): sigma^2 = eta^2 times the variance
        of q(x_s | x_t, x0), b_s^2 b_{t|s}^2 / b_t^2, so r_z^2 = eta^2 b_{t|s}^2 / b_t^2 and r_eps^2 = 1 - r_z^2;
        eta = 1 is the ancestral step (DDPM), eta = 0 deterministic DDIM. 'beta' keeps the posterior mean and
        draws sigma^2 = eta^2 b_{t|s}^2 (DDPM's sigma_t^2 = beta_t when s = t - 1).
        """
        if variance not in self.capabilities.variances:
            raise UdmError(f"unknown variance {variance!r}; choose one of {list(self.capabilities.variances)}")
        if eta < 0:
            raise UdmError(f"eta must be >= 0, got {eta}")
        (a2_t, b2_t), (a2_s, b2_s) = self.squares(t), self.squares(s)
        jump = self.schedule.transition(a2_t, b2_t, a2_s, b2_s)  # b_{t|s}^2
        if variance == "posterior":
            r2 = (eta**2 * jump / b2_t).clamp(max=1.0)
            r_eps, r_z = (1 - r2).sqrt(), r2.sqrt()
        else:
            safe_b2_s = torch.where(b2_s > 0, b2_s, torch.ones_like(b2_s))
            r_eps = (1 - jump / b2_t).clamp(min=0.0).sqrt()
            r_z = eta * (jump / safe_b2_s).sqrt()
        zero = b2_s <= 0  # at s = 0, F_0 ignores eps (b_0 = 0): x_0 = x0_hat
        return torch.where(zero, 0.0, r_eps), torch.where(zero, 0.0, r_z)

    def describe(self) -> str:
        return f"{type(self).__name__}(T={self.T}, schedule={self.schedule.describe()}, parametrization={self.parametrization})"
