"""Heun's second-order step (EDM, Karras et al. 2022, algorithm 2) for every affine Gaussian process.

Written in the scale-free variables x~ = x / a and sigma = b / a, where the probability-flow ODE is
dx~/dsigma = (x~ - D(x~; sigma)) / sigma = eps_hat, the Euler step from t to s is the inverse step

    x_s = a_s (x~_t + (sigma_s - sigma_t) eps_t) = a_s x0_hat_t + b_s eps_t         (DDIM)

and Heun averages the slope with the one at the Euler point:

    x_s = a_s (x~_t + (sigma_s - sigma_t) (eps_t + eps_s') / 2),   eps_s' = F_s^{-1}(D(x_s^Euler, s), x_s^Euler).

A step into the data (sigma_s = 0, as in EDM) is the Euler step, as is a step out of a start noisier than sigma = 80
(flow's prior has sigma = inf, VP's cosine 2e4: the grids jump from there to the top of their ramp, and Heun's average
across that jump multiplies the change of slope by a_s / a_t, 255 on the cosine schedule): 2 network evaluations per
step, 1 on those.

Churn (EDM's stochastic sampler): before the net sees x_t with S_tmin <= sigma_t <= S_tmax, the noise is raised to
sigma_hat = (1 + gamma) sigma_t, gamma = min(S_churn / N, sqrt(2) - 1), by x~ += sqrt(sigma_hat^2 - sigma_t^2) S_noise z.
sigma_hat is capped at the schedule's sigma at t = T (time has no room above it), and a step out of sigma = inf
is not churned.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from udm.errors import UdmError
from udm.processes.base import per_sample
from udm.processes.capabilities import require
from udm.samplers.grids import SIGMA_CAP
from udm.samplers.steps import StepRule

JUMP = SIGMA_CAP * (1 + 1e-6)  # sigma above which a step is the jump to the grid's ramp (EDM starts at 80 itself)


class Heun(StepRule):
    uses_inverse = True
    second_order = True

    def __init__(self, churn: float = 0.0, churn_min: float = 0.0, churn_max: float = math.inf, churn_noise: float = 1.0,
                 steps: int | None = None):
        if churn < 0 or churn_noise < 0 or churn_min < 0 or churn_max < churn_min:
            raise UdmError(f"need churn >= 0, churn_noise >= 0 and 0 <= churn_min <= churn_max; got churn={churn}, "
                           f"churn_min={churn_min}, churn_max={churn_max}, churn_noise={churn_noise}")
        if churn == 0 and (churn_min, churn_max, churn_noise) != (0.0, math.inf, 1.0):
            raise UdmError(f"churn_min, churn_max and churn_noise shape the churn, which is off (churn=0); set churn > 0 "
                           f"or leave them (got {churn_min}, {churn_max}, {churn_noise})")
        self.churn, self.churn_min, self.churn_max, self.churn_noise = float(churn), float(churn_min), float(churn_max), float(churn_noise)
        self.steps = steps  # N of gamma = S_churn / N, set per run by bind
        self.churns = churn > 0

    def check(self, process) -> None:
        require(process, "invertible", "Heun's step", "use sampler=naive")
        require(process, "continuous_time", "Heun's step (the ODE of an affine Gaussian process, in sigma = b/a)",
                "use sampler=ddim or dpm_solver")

    def bind(self, process, ts: list) -> Heun:
        return Heun(self.churn, self.churn_min, self.churn_max, self.churn_noise, len(ts))

    def raise_noise(self, process, x: Tensor, t: Tensor, generator=None) -> tuple[Tensor, Tensor]:
        sigma = process.sigma_at(t)
        top = process.sigma_at(torch.full_like(t, process.T))
        inside = (sigma >= self.churn_min) & (sigma <= self.churn_max) & torch.isfinite(sigma)
        gamma = torch.where(inside, min(self.churn / self.steps, math.sqrt(2) - 1), 0.0)
        sigma_hat = torch.minimum(sigma * (1 + gamma), torch.where(torch.isfinite(top), top, sigma * (1 + gamma)))
        gamma = torch.where(sigma_hat > sigma, gamma, 0.0)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        t_hat = torch.where(gamma > 0, process.time_of_sigma(sigma_hat), t.double())
        a, a_hat = process.coefficients(t)[0], process.coefficients(t_hat)[0]
        a = torch.where(gamma > 0, a, torch.ones_like(a))  # unchurned rows (a may be 0 there) stay as they are
        x_tilde = x / per_sample(a, x) + per_sample((sigma_hat**2 - sigma**2).sqrt() * self.churn_noise, x) * z
        churned = (gamma > 0).reshape(-1, *([1] * (x.dim() - 1)))
        return torch.where(churned, per_sample(a_hat, x) * x_tilde, x), t_hat

    def __call__(self, process, x_t, x0_hat, t, s, generator=None, denoise=None):
        eps_t = process.inverse(x0_hat, x_t, t)
        x_euler = process(x0_hat, s, eps_t)
        (a_t, b_t), (a_s, b_s) = process.coefficients(t), process.coefficients(s)
        sigma_t, sigma_s = b_t / a_t, b_s / a_s
        if denoise is None or bool((b_s == 0).any() or (sigma_t > JUMP).any()):
            return x_euler  # into the data, or the jump from a start above the grid's ramp
        eps_s = process.inverse(denoise(x_euler, s), x_euler, s)
        x_tilde = x_t / per_sample(a_t, x_t)
        return per_sample(a_s, x_t) * (x_tilde + per_sample(sigma_s - sigma_t, x_t) * (eps_t + eps_s) / 2)
