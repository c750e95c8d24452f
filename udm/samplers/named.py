"""The samplers of the papers, each a `Sampler` built from flat kwargs (what the conf/sampler/*.yaml files name);
each takes an optional `guidance` (udm.samplers.Guidance: classifier-free guidance on x0_hat)."""

from __future__ import annotations

from udm.errors import UdmError
from udm.processes.capabilities import require
from udm.samplers.grids import Loop, grid_named
from udm.samplers.guidance import Guidance
from udm.samplers.langevin import Langevin
from udm.samplers.loop import Sampler
from udm.samplers.heun import Heun as HeunStep
from udm.samplers.solvers import DPMSolver2M, DPMSolver3M
from udm.samplers.steps import Baseline, Inverse, Mixed


class DDPM(Sampler):
    """DDPM ancestral sampling (Ho et al. 2020): the mixed step at eta = 1 over all T steps by default;
    variance 'posterior' is sigma_t^2 = beta~_t, 'beta' is sigma_t^2 = beta_t; None takes the process's
    own first choice (posterior for Gaussian processes, fresh noise for cold ones with sigma > 0)."""

    def __init__(self, steps: int | None = None, variance: str | None = None, guidance: Guidance | None = None):
        super().__init__(Mixed(eta=1.0, variance=variance), steps, guidance=guidance)


class DDIM(Sampler):
    """DDIM (Song et al. 2021, eq. 16): the mixed step with sigma_t = eta * sqrt(posterior variance of the jump);
    eta = 0 is deterministic (the inverse step, which every invertible process takes). The grid is any of udm's by
    name (uniform by default: diffusers' "trailing" spacing) or a grid object."""

    def __init__(self, steps: int | None = 50, eta: float = 0.0, grid="uniform", rho: float = 7.0, power: float = 1.0,
                 guidance: Guidance | None = None):
        super().__init__(Mixed(eta=eta), steps, grid=grid_named(grid, rho, power), guidance=guidance)


class DPMSolver(Sampler):
    """DPM-Solver++ (Lu et al. 2022), multistep of order 2 (2M) or 3 (3M): the inverse step with x0_hat extrapolated
    from the last two or three predictions, times evenly spaced in log-SNR (solver_time: on the integer grid, for
    every invertible real-valued process; logsnr: real-valued, for affine Gaussian processes) or any other grid."""

    def __init__(self, steps: int | None = 20, order: int = 2, grid="solver_time", rho: float = 7.0,
                 power: float = 1.0, guidance: Guidance | None = None):
        if order not in (2, 3):
            raise UdmError(f"DPM-Solver++'s multistep order is 2 or 3, got {order!r}")
        transform = DPMSolver2M() if order == 2 else DPMSolver3M()
        super().__init__(Inverse(), steps, grid=grid_named(grid, rho, power), transform=transform, guidance=guidance)


class Euler(Sampler):
    """Euler's method on the probability-flow ODE in x~ = x/a and sigma = b/a (k-diffusion's sample_euler), which is
    exactly the inverse step (DDIM at eta = 0); on the flow schedule it is the flow ODE's Euler step x_s = x_t + (s - t) v.
    The grid is any of udm's by name (uniform by default; karras for EDM) or a grid object (e.g. Explicit([...]))."""

    def __init__(self, steps: int | None = 50, grid="uniform", rho: float = 7.0, power: float = 1.0,
                 guidance: Guidance | None = None):
        super().__init__(Inverse(), steps, grid=grid_named(grid, rho, power), guidance=guidance)


class Heun(Sampler):
    """EDM's Heun sampler (Karras et al. 2022, algorithm 2): 2 network evaluations per step (1 on the last), the
    Karras grid by default; churn > 0 is its stochastic variant (S_churn, S_tmin, S_tmax, S_noise)."""

    def __init__(self, steps: int | None = 18, grid="karras", rho: float = 7.0, power: float = 1.0, churn: float = 0.0,
                 churn_min: float = 0.0, churn_max: float = float("inf"), churn_noise: float = 1.0,
                 guidance: Guidance | None = None):
        super().__init__(HeunStep(churn, churn_min, churn_max, churn_noise), steps, grid=grid_named(grid, rho, power),
                         guidance=guidance)


class Improved(Sampler):
    """The inverse step x_s = F_s(x0_hat, F_t^{-1}(x0_hat, x_t)): cold diffusion's improved sampler
    (Bansal et al. 2022), the seed's token sampler (one token per step when steps = T). The grid is any of udm's by
    name (uniform by default; power, e.g. grid=power power=0.6, for fewer steps) or a grid object."""

    def __init__(self, steps: int | None = None, grid="uniform", rho: float = 7.0, power: float = 1.0,
                 guidance: Guidance | None = None):
        super().__init__(Inverse(), steps, grid=grid_named(grid, rho, power), guidance=guidance)


class ReMDM(Sampler):
    """Remasking for token processes (ReMDM, Wang et al. 2025): the mixed step at eta, where revealed tokens are
    corrupted again at ReMDM's rate sigma_t (`schedule` rescale: eta sigma_max; cap: min(eta, sigma_max);
    confidence: rescale, the least confident at reveal remasked most) and re-predicted. eta = 0 is the
    improved sampler, bit for bit. loop_steps > 0 adds ReMDM's loop: that many extra steps at the time where a
    share `loop_at` of the positions is still corrupted, on which remasking revises the nearly finished text.
    Unlike the paper's loop schedule, remasking runs at eta on every step here, not on the loop's alone."""

    SCHEDULES = ("rescale", "cap", "confidence")

    def __init__(self, steps: int | None = None, eta: float = 0.1, schedule: str = "cap", loop_steps: int = 0,
                 loop_at: float = 0.1, guidance: Guidance | None = None):
        if schedule not in self.SCHEDULES:
            raise UdmError(f"schedule={schedule!r}: ReMDM's remasking schedules are {', '.join(self.SCHEDULES)}")
        if loop_steps and not eta:
            raise UdmError(f"loop_steps={loop_steps} repeats a step that only remasking (eta > 0) changes; set eta > 0 "
                           "or loop_steps=0")
        grid = Loop(loop_at, loop_steps) if loop_steps else None
        super().__init__(Mixed(eta=eta, variance=schedule), steps, grid=grid, guidance=guidance)

    def check(self, process) -> None:
        require(process, "remasking", "ReMDM (sampler=remdm)", "for Gaussian noise use sampler=ddpm or ddim with eta")
        super().check(process)


class Naive(Sampler):
    """The baseline step x_s = F_s(x0_hat, fresh noise): cold diffusion's naive sampler; works for every process.
    The grid is any of udm's by name (uniform by default) or a grid object."""

    def __init__(self, steps: int | None = None, grid="uniform", rho: float = 7.0, power: float = 1.0,
                 guidance: Guidance | None = None):
        super().__init__(Baseline(), steps, grid=grid_named(grid, rho, power), guidance=guidance)


class PredictorCorrector(Sampler):
    """Predictor-corrector sampling (Song et al. 2021): an ancestral step (the mixed step at eta), then
    `corrector_steps` Langevin steps at signal-to-noise ratio `snr`."""

    def __init__(self, steps: int | None = None, eta: float = 1.0, corrector_steps: int = 1, snr: float = 0.16,
                 guidance: Guidance | None = None):
        if type(corrector_steps) is not int or corrector_steps < 0:
            raise UdmError(f"corrector_steps is a whole number of Langevin steps >= 0 (0: none), got {corrector_steps!r}")
        super().__init__(Mixed(eta=eta), steps, corrector=Langevin(corrector_steps, snr) if corrector_steps != 0 else None,
                         guidance=guidance)
