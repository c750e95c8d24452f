"""Analytic-DPM (Bao et al. 2022) as a step rule: the mixed step of the DDIM family at eta with the optimal
variance sigma*^2 from the model's Gamma_t (udm.analytic), and the sampler that prepares it for a checkpoint."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from udm.analytic import analytic_variance, check_moments, model_eps_moments, moment_settings
from udm.errors import UdmError
from udm.processes.base import per_sample
from udm.processes.capabilities import require
from udm.samplers.loop import Sampler
from udm.samplers.steps import StepRule

PIXEL_LEVEL = 2 / 255  # one step of 8-bit pixels in [-1, 1]


def check_settings(eta: float, clip_pixels: float) -> None:
    if not 0.0 <= eta <= 1.0:
        raise UdmError(f"Analytic-DPM's family needs 0 <= eta <= 1, got {eta}")
    if clip_pixels < 0:
        raise UdmError(f"clip_pixels must be >= 0 (0: no clip), got {clip_pixels}")


class AnalyticStep(StepRule):
    """x_s = a_s x0_hat + sqrt(b_s^2 - lambda^2) eps_hat + sigma* z with lambda^2 = eta^2 * posterior variance
    and sigma*^2 from Gamma_t = E||eps_theta||^2 / d ([T + 1], `gamma`). As in the paper's code, sigma of the
    step into the last noisy time t_n (the step before the deterministic t_n -> 0) is clipped so that
    E|sigma z| = sigma sqrt(2 / pi) <= clip_pixels 8-bit pixel levels; clip_pixels=0 turns the clip off."""

    uses_inverse = True

    def __init__(self, gamma: Tensor, eta: float = 1.0, clip_pixels: float = 2.0, last_noisy: int | None = None):
        check_settings(eta, clip_pixels)
        self.gamma, self.eta, self.clip_pixels, self.last_noisy = torch.as_tensor(gamma, dtype=torch.float64), float(eta), clip_pixels, last_noisy

    def check(self, process) -> None:
        require(process, "analytic_variance", "Analytic-DPM's variance", "use sampler=ddpm or ddim")
        check_moments(self.gamma, process.T)

    def bind(self, process, ts: list[int]) -> AnalyticStep:
        return AnalyticStep(self.gamma.to(process.alphabar.device), self.eta, self.clip_pixels, ts[-1])

    def __call__(self, process, x_t, x0_hat, t, s, generator=None):
        eps_hat = process.inverse(x0_hat, x_t, t)
        b2_s = 1 - process.alphabar[s]
        safe_b2_s = torch.where(b2_s > 0, b2_s, torch.ones_like(b2_s))
        lambda2, sigma2 = analytic_variance(process, self.gamma, t, s, self.eta)
        if self.clip_pixels > 0 and self.last_noisy is not None:
            max_sigma = self.clip_pixels * PIXEL_LEVEL * math.sqrt(math.pi / 2)
            sigma2 = torch.where(s == self.last_noisy, sigma2.clamp(max=max_sigma**2), sigma2)
        zero = b2_s <= 0  # at s = 0, F_0 ignores eps: x_0 = x0_hat
        r_eps = torch.where(zero, 0.0, ((b2_s - lambda2) / safe_b2_s).clamp(min=0.0).sqrt())
        r_z = torch.where(zero, 0.0, (sigma2 / safe_b2_s).sqrt())
        z = process.sample_noise(x0_hat, generator)
        return process(x0_hat, s, per_sample(r_eps, eps_hat) * eps_hat + per_sample(r_z, z) * z)


class AnalyticDPM(Sampler):
    """Analytic-DPM sampling: eta = 1 is Analytic-DDPM, eta = 0 Analytic-DDIM. `prepare(process, net, source)`
    reads Gamma_t from the cache beside the checkpoint or estimates it on the checkpoint's training data
    (`moments`: num_samples, batch_size, seed) and returns the ready sampler; `gamma` gives it directly."""

    def __init__(self, steps: int | None = None, eta: float = 1.0, clip_pixels: float = 2.0,
                 moments: dict | None = None, gamma: Tensor | None = None, guidance=None):
        check_settings(eta, clip_pixels)  # refused now, before any estimate
        moment_settings(dict(moments or {}))
        self.eta, self.clip_pixels, self.moments = float(eta), clip_pixels, dict(moments or {})
        step = AnalyticStep(gamma, eta, clip_pixels) if gamma is not None else None
        super().__init__(step, steps, guidance=guidance)

    def check(self, process) -> None:
        require(process, "analytic_variance", "Analytic-DPM (sampler=analytic_ddpm / analytic_ddim)", "use sampler=ddpm or ddim")
        if self.step is None:
            raise UdmError("Analytic-DPM sampling needs the eps moments Gamma_t of the model: udm-sample, udm-eval and "
                           "udm.models.open_model(...).sampler(...) estimate them from a checkpoint's training data "
                           "(sampler.prepare(process, net, model)); samples during training need another sampler")
        super().check(process)

    def prepare(self, process, model, source=None) -> Sampler:
        if self.step is not None:
            return super().prepare(process, model, source)
        require(process, "analytic_variance", "Analytic-DPM (sampler=analytic_ddpm / analytic_ddim)", "use sampler=ddpm or ddim")
        if source is None:
            raise UdmError("Analytic-DPM estimates Gamma_t on the model's training data: prepare it with the opened checkpoint "
                           "(udm.models.open_model), or pass gamma=...")
        gamma = model_eps_moments(process, model, source.checkpoint_path, source.recipe, progress=source.progress, **self.moments)
        return Sampler(AnalyticStep(gamma, self.eta, self.clip_pixels), self.steps, guidance=self.guidance)
