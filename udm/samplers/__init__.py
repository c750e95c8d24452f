"""Samplers as objects: a time grid, a step rule, an optional x0_hat transform and corrector, run by one loop.

Every sampler is called as sampler(process, model, x_T, generator=None, t_start=None, cond=None,
callback=None, progress=False). A new sampler is one class (a `Sampler` built from its parts, or
a class with the same call) plus one YAML file in udm/conf/sampler/.
"""

from udm.samplers.analytic import AnalyticDPM, AnalyticStep
from udm.samplers.cache import OutputCache
from udm.samplers.grids import Explicit, Karras, LogSNR, Power, SolverTime, Uniform
from udm.samplers.guidance import Guidance
from udm.samplers.langevin import AnnealedLangevin, Langevin
from udm.samplers.loop import Sampler, SamplerLike, Step, reverse_loop
from udm.samplers.heun import Heun as HeunStep
from udm.samplers.named import DDIM, DDPM, DPMSolver, Euler, Heun, Improved, Naive, PredictorCorrector, ReMDM
from udm.samplers.solvers import DPMSolver2M, DPMSolver3M, dpm_solver_2m, dpm_solver_3m
from udm.samplers.steps import Baseline, Inverse, Mixed, Remasking, StepRule

__all__ = [
    "DDIM", "DDPM", "AnalyticDPM", "AnalyticStep", "AnnealedLangevin", "Baseline", "DPMSolver", "DPMSolver2M",
    "DPMSolver3M", "Euler", "Heun", "HeunStep", "Karras", "LogSNR", "dpm_solver_3m",
    "Explicit", "Guidance", "Improved", "Inverse", "Langevin", "Mixed", "Naive", "OutputCache", "Power", "PredictorCorrector", "ReMDM", "Remasking", "Sampler", "SamplerLike", "SolverTime",
    "Step", "StepRule", "Uniform", "dpm_solver_2m", "reverse_loop",
]
