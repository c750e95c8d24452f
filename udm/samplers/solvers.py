"""x0_hat transforms: how a multistep solver reshapes the prediction before the (inverse) step.

DPM-Solver++(2M) (Lu et al. 2022, alg. 2) is the inverse step with x0_hat replaced by its
second-order extrapolation in the process's solver time lambda(t) (log-SNR for Gaussian
processes); with a Gaussian process and the inverse step it is exactly DPM-Solver++(2M), and
it applies to every process whose x0_hat is real-valued and may be extrapolated.
"""

from __future__ import annotations

import math

from torch import Tensor

from udm.processes.capabilities import require
from udm.samplers.grids import time_tensor


def dpm_solver_2m(x0_hat: Tensor, previous: Tensor | None, lam_prev: float | None, lam_t: float, lam_s: float) -> Tensor:
    """D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_prev with r = h_prev / h, h = lambda_s - lambda_t,
    h_prev = lambda_t - lambda_prev.

    The first step has no history and the last (into lambda = inf, t = 0) is first order,
    as in the paper: both return x0_hat unchanged.
    """
    if previous is None or not math.isfinite(lam_s) or not math.isfinite(lam_prev):
        return x0_hat
    ratio = 1 / (2 * ((lam_t - lam_prev) / (lam_s - lam_t)))
    return (1 + ratio) * x0_hat - ratio * previous


class DPMSolver2M:
    """The x0_hat transform of DPM-Solver++(2M); `bind` gives the per-run object holding the history."""

    def check(self, process) -> None:
        require(process, "real_valued", "DPM-Solver++(2M)'s extrapolation of x0_hat")
        require(process, "extrapolates_x0", "DPM-Solver++(2M)'s extrapolation of x0_hat")

    def bind(self, process, ts: list[int]) -> _DPMSolver2MRun:
        return _DPMSolver2MRun(process.solver_time(time_tensor(ts + [0])).tolist())  # once, no syncs in the loop


class _DPMSolver2MRun:
    def __init__(self, lam: list[float]):
        self.lam, self.previous, self.lam_previous = lam, None, None

    def __call__(self, x0_hat: Tensor, i: int) -> Tensor:
        out = dpm_solver_2m(x0_hat, self.previous, self.lam_previous, self.lam[i], self.lam[i + 1])
        self.previous, self.lam_previous = x0_hat, self.lam[i]
        return out


def dpm_solver_3m(history: list[Tensor], lam: list[float], lam_s: float) -> Tensor:
    """DPM-Solver++(3M)'s x0 estimate for the step into lambda_s, from the last three predictions
    history = [x0 at lambda_{-2}, at lambda_{-1}, at lambda_0 (now)] and lam their times (Lu et al. 2022, alg. 2's
    third-order multistep). The step x_s = (b_s/b_t) x_t + a_s (1 - e^-h) D with

        D = D0 + ((e^-h - 1)/h + 1) / (1 - e^-h) D1 - ((e^-h - 1 + h)/h^2 - 1/2) / (1 - e^-h) D2,
        r0 = h0/h, r1 = h1/h, D1_0 = (D0 - x0_{-1}) / r0, D1_1 = (x0_{-1} - x0_{-2}) / r1,
        D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1),

    is the solver's update written as the inverse step with x0_hat = D.
    """
    m2, m1, m0 = history
    l2, l1, l0 = lam
    h, h0, h1 = lam_s - l0, l0 - l1, l1 - l2
    r0, r1 = h0 / h, h1 / h
    d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    em = math.expm1(-h)  # e^-h - 1
    c1 = (em / h + 1) / -em
    c2 = ((em + h) / h**2 - 0.5) / -em
    return m0 + c1 * d1 - c2 * d2


class DPMSolver3M:
    """The x0_hat transform of DPM-Solver++(3M): first order on the first step, second on the second, third after;
    the last step (into the data, lambda = inf) is first order, and with fewer than 15 steps the one before it
    second order (diffusers' lower_order_final, which keeps few-step sampling stable)."""

    check = DPMSolver2M.check

    def bind(self, process, ts: list) -> _DPMSolver3MRun:
        return _DPMSolver3MRun(process.solver_time(time_tensor(ts + [0])).tolist())


class _DPMSolver3MRun:
    def __init__(self, lam: list[float]):
        self.lam, self.history = lam, []

    def __call__(self, x0_hat: Tensor, i: int) -> Tensor:
        n = len(self.lam) - 1  # steps in the run
        self.history = (self.history + [x0_hat])[-3:]
        order = min(len(self.history), 3)
        if i == n - 1 or not math.isfinite(self.lam[i + 1]):
            order = 1
        elif i == n - 2 and n < 15:
            order = min(order, 2)
        if order == 1:
            return x0_hat
        if order == 2:
            return dpm_solver_2m(x0_hat, self.history[-2], self.lam[i - 1], self.lam[i], self.lam[i + 1])
        return dpm_solver_3m(self.history, self.lam[i - 2: i + 1], self.lam[i + 1])
