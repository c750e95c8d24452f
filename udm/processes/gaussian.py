"""Variance-preserving Gaussian diffusion (DDPM, DDIM), DESIGN.md section 2: the affine process on DDPM's schedules.

Notation (DDPM paper, seed 002): alphabar_t = prod_{i<=t} (1 - beta_i), alphabar_0 = 1,
a_t = sqrt(alphabar_t), b_t = sqrt(1 - alphabar_t), and

    x_t = F_t(x0, eps) = a_t x0 + b_t eps,   eps = F_t^{-1}(x0, x_t) = (x_t - a_t x0) / b_t.

`Gaussian` keeps the kwargs of udm's first VP class (checkpoints name it), on the integer grid its tables
are the same numbers as before, and the net sees x_t as it is (no input scaling).
"""

from __future__ import annotations

from udm.errors import UdmError
from udm.processes.affine import Affine
from udm.processes.schedules import DiscreteVP, cosine_alphabar, linear_alphabar, scaled_linear_alphabar

PARAMETRIZATIONS = ("eps", "x0", "v")
BETA_SCHEDULES = {"linear": linear_alphabar, "scaled_linear": scaled_linear_alphabar}  # betas from beta_start to beta_end
SCHEDULES = {**BETA_SCHEDULES, "cosine": cosine_alphabar}

__all__ = ["Gaussian", "PARAMETRIZATIONS", "SCHEDULES", "cosine_alphabar", "linear_alphabar", "scaled_linear_alphabar"]


class Gaussian(Affine):
    """VP Gaussian diffusion on DDPM's linear, latent diffusion's scaled-linear or Improved DDPM's cosine schedule;
    the net predicts eps (default), x0 or v = a_t eps - b_t x0. Training densities, loss weights and input scaling
    are the affine process's (defaults: DDPM's; sigma_data = 1, which makes c_in = 1 on a VP schedule)."""

    def __init__(
        self,
        T: int = 1000,
        schedule: str = "linear",
        parametrization: str = "eps",
        clip_denoised: bool = True,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        sigma_data: float = 1.0,
        scale_input: bool = False,
        **training,
    ):
        if schedule not in SCHEDULES:
            raise UdmError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
        if parametrization not in PARAMETRIZATIONS:
            raise UdmError(f"unknown parametrization {parametrization!r}; choose one of {list(PARAMETRIZATIONS)}")
        if type(T) is not int or T < 1:
            raise UdmError(f"T must be a positive number of steps, got {T}")
        alphabar = SCHEDULES[schedule](T, beta_start, beta_end) if schedule in BETA_SCHEDULES else cosine_alphabar(T)
        table = DiscreteVP(alphabar, schedule)
        super().__init__(table, T, parametrization, clip_denoised, sigma_data=sigma_data, scale_input=scale_input, **training)
        self.schedule_name = schedule

    def describe(self) -> str:
        return f"Gaussian(T={self.T}, schedule={self.schedule_name}, parametrization={self.parametrization})"
