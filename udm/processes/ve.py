"""Variance-exploding Gaussian diffusion, the process behind SMLD / NCSN (seed 003): the affine process with a = 1.

    x_t = F_t(x0, eps) = x0 + sigma_t eps,   sigma_0 = 0,   sigma_1..sigma_T geometric from sigma_min to sigma_max

The net predicts eps (denoising score matching: score(x_t) = -eps / sigma_t), the prior is
N(0, sigma_max^2), and the mixed step with eta = 1 is the ancestral step of the VE posterior
q(x_s | x_t, x0) = N(x0 + sigma_s^2/sigma_t^2 (x_t - x0), sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2).
Annealed Langevin dynamics and predictor-corrector sampling (udm.samplers) use `score`.
`VarianceExploding` keeps the kwargs of udm's first VE class (checkpoints name it): the net sees x_t as it is,
unless scale_input=true (what process=smld sets for new models).
"""

from __future__ import annotations

from udm.errors import UdmError
from udm.processes.affine import Affine
from udm.processes.capabilities import Capabilities
from udm.processes.schedules import DiscreteVE


class VarianceExploding(Affine):
    def __init__(self, T: int = 100, sigma_min: float = 0.01, sigma_max: float = 10.0, clip_denoised: bool = False,
                 scale_input: bool = False, parametrization: str = "eps", **training):
        if type(T) is not int or T < 1:
            raise UdmError(f"T must be a positive number of noise levels, got {T}")
        if not 0 < sigma_min < sigma_max:
            raise UdmError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        super().__init__(DiscreteVE(T, sigma_min, sigma_max), T, parametrization, clip_denoised, scale_input=scale_input, **training)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.register_buffer("sigma", self.b, persistent=False)

    @property
    def prior_std(self) -> float:
        return self.sigma_max  # the float the old class scaled its prior by (b_T is exp(log sigma_max))

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(invertible=True, gaussian_noise=True, variances=("posterior",), score=True,
                            extrapolates_x0=True, continuous_time=True)

    def describe(self) -> str:
        return f"VarianceExploding(T={self.T}, sigma={self.sigma_min}..{self.sigma_max})"
