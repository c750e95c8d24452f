"""x0_hat transforms: how a multistep solver reshapes the prediction before the (inverse) step.

DPM-Solver++(2M) (Lu et al. 2022, alg. 2) is the inverse step with x0_hat replaced by its
second-order extrapolation in the process's solver time lambda(t) (log-SNR for Gaussian
processes); with a Gaussian process and the inverse step it is exactly DPM-Solver++(2M), and
it applies to every process whose x0_hat is real-valued and may be extrapolated.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from udm.processes.capabilities import require


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
        return _DPMSolver2MRun(process.solver_time(torch.tensor(ts + [0])).tolist())  # once, no syncs in the loop


class _DPMSolver2MRun:
    def __init__(self, lam: list[float]):
        self.lam, self.previous, self.lam_previous = lam, None, None

    def __call__(self, x0_hat: Tensor, i: int) -> Tensor:
        out = dpm_solver_2m(x0_hat, self.previous, self.lam_previous, self.lam[i], self.lam[i + 1])
        self.previous, self.lam_previous = x0_hat, self.lam[i]
        return out
