"""Step rules: x_s ~ p(x_s | x_t, x0 = x0_hat) for s < t, the three generic choices of DESIGN.md section 1.

    Baseline  x_s = F_s(x0_hat, z),                              z ~ q fresh
    Inverse   x_s = F_s(x0_hat, eps_hat),                        eps_hat = F_t^{-1}(x0_hat, x_t)
    Mixed     x_s = F_s(x0_hat, sqrt(1 - r^2) eps_hat + r z),    q = N(0, I), r = r(t, s, eta) from the process

A rule is called as rule(process, x_t, x0_hat, t, s, generator) with t, s LongTensors [B];
`check(process)` refuses, before any sampling, a process the rule (or one of its knobs) does not apply to;
`bind(process, ts)` returns the rule for one run over the times ts (rules that need no per-run state return themselves).
"""

from __future__ import annotations

import torch
from torch import Tensor

from udm.errors import UdmError
from udm.processes.base import per_sample
from udm.processes.capabilities import require


class StepRule:
    uses_inverse = False  # whether x_s is built from eps_hat = F_t^{-1}(x0_hat, x_t) (what x0 extrapolation relies on)
    second_order = False  # called with denoise=..., x0_hat at another point, for a second evaluation (Heun)
    churns = False  # raise_noise(process, x, t, generator) -> (x, t_hat) before the net sees x (EDM's churn)

    def check(self, process) -> None:
        pass

    def bind(self, process, ts: list[int]) -> StepRule:
        return self

    def idle(self, process, ts: list[int]) -> list[bool]:
        """Which steps of the run leave x as it is, so the loop skips their network call (the process knows)."""
        return process.steps_without_change(ts)

    def __call__(self, process, x_t: Tensor, x0_hat: Tensor, t: Tensor, s: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError


class Baseline(StepRule):
    """x_s = F_s(x0_hat, fresh eps): works for every process (cold diffusion's naive sampler)."""

    def __call__(self, process, x_t, x0_hat, t, s, generator=None):
        return process(x0_hat, s, process.sample_noise(x0_hat, generator))


class Inverse(StepRule):
    """x_s = F_s(x0_hat, F_t^{-1}(x0_hat, x_t)): deterministic (DDIM, cold diffusion's improved sampler, Gibbs-like unmasking)."""

    uses_inverse = True

    def check(self, process) -> None:
        require(process, "invertible", "the inverse step", "use the baseline step (sampler=naive)")

    def __call__(self, process, x_t, x0_hat, t, s, generator=None):
        return process(x0_hat, s, process.inverse(x0_hat, x_t, t))


class Mixed(StepRule):
    """x_s = F_s(x0_hat, r_eps eps_hat + r_z z) with (r_eps, r_z) = process.noise_ratio(t, s, eta, variance).

    eta = 0 with variance 'posterior' is the inverse step (DDIM); eta = 1 is DDPM's ancestral step on a
    Gaussian process. `variance` names sigma_t among the process's (capabilities.variances); None takes its
    first. On a token process eta > 0 remasks (ReMDM): the fresh noise corrupts revealed tokens again, and
    `variance` names the remasking schedule (rescale, cap, confidence). On other processes without Gaussian
    noise only eta = 0 applies, and the step is the inverse step.
    """

    uses_inverse = True

    def __init__(self, eta: float = 0.0, variance: str | None = None):
        if not 0.0 <= float(eta) <= 1.0:
            raise UdmError(f"eta must lie in [0, 1] (0: deterministic, 1: the full posterior noise), got {eta}")
        self.eta, self.variance = float(eta), variance

    def check(self, process) -> None:
        require(process, "invertible", "the mixed step", "use the baseline step (sampler=naive)")
        if self.eta > 0 and not process.capabilities.remasking:
            require(process, "gaussian_noise", f"eta={self.eta} (fresh noise in the mixed step, e.g. sampler=ddpm or pc)",
                    "use eta=0 (sampler=ddim or improved) or the baseline step (sampler=naive)")
        variances = process.capabilities.variances
        if self.variance is not None and self.variance not in variances:
            known = f"knows only {list(variances)}" if variances else "draws no fresh noise"
            raise UdmError(f"variance={self.variance!r} does not apply to {process.describe()}, which {known}")

    def bind(self, process, ts: list[int]) -> StepRule:
        if self.eta > 0 and process.capabilities.remasking:
            return Remasking(self.eta, self.variance or process.capabilities.variances[0])
        return self

    def __call__(self, process, x_t, x0_hat, t, s, generator=None):
        eps_hat = process.inverse(x0_hat, x_t, t)
        if not process.capabilities.gaussian_noise:  # eta = 0 here (check refuses more): the inverse step
            return process(x0_hat, s, eps_hat)
        r_eps, r_z = process.noise_ratio(t, s, self.eta, self.variance or process.capabilities.variances[0])
        # z is drawn at eta = 0 too, so the random stream (and any later draw from the generator, e.g. a
        # sampling decoder's) does not depend on eta; it costs one randn per step
        z = process.sample_noise(x0_hat, generator)
        return process(x0_hat, s, per_sample(r_eps, eps_hat) * eps_hat + per_sample(r_z, z) * z)


class Remasking(StepRule):
    """The mixed step of a token process for one sampling run (ReMDM, Wang et al. 2025): the inverse step's
    eps_hat, except that the revealed positions `process.remasked` picks are corrupted again with fresh noise
    (for [MASK] they become [MASK]; for the edit model they take a fresh replacement) and x_s keeps k(s)
    corrupted positions. The 'confidence' schedule remembers q(x0_i | x_t) from the step that revealed each
    token and remasks the least confident more often (weights softmax(-confidence), ReMDM-conf).
    """

    uses_inverse = True

    def __init__(self, eta: float, schedule: str):
        self.eta, self.schedule = eta, schedule
        self.confidence: Tensor | None = None  # [B, L] at reveal time; positions revealed from the start count as 1

    def check(self, process) -> None:
        require(process, "remasking", f"remasking (eta={self.eta})", "use a token process, or ddpm / ddim for Gaussian noise")
        if self.schedule not in process.capabilities.variances:
            raise UdmError(f"schedule={self.schedule!r} is not one of the remasking schedules {list(process.capabilities.variances)}")

    def bind(self, process, ts: list[int]) -> StepRule:
        return Remasking(self.eta, self.schedule)  # a fresh confidence memory for every run

    def idle(self, process, ts: list[int]) -> list[bool]:
        return [False] * len(ts)  # remasking changes x on steps that reveal nothing new

    def __call__(self, process, x_t, x0_hat, t, s, generator=None):
        eps_hat = process.inverse(x0_hat, x_t, t)
        remembered = self.schedule == "confidence"
        if remembered and self.confidence is None:  # bind gives every run a fresh rule, so one batch shape
            self.confidence = torch.ones(x_t.shape, device=x_t.device)
        again = process.remasked(x0_hat, x_t, t, s, self.eta, self.schedule, -self.confidence if remembered else None, generator)
        fresh = process.sample_noise(x0_hat, generator)
        keys = torch.where(again, torch.full_like(eps_hat.keys, -1.0), eps_hat.keys)  # below every other key: corrupted at s
        x_s = process(x0_hat, s, type(eps_hat)(keys, torch.where(again, fresh.offsets, eps_hat.offsets)))
        if remembered:
            tokens = x0_hat.tokens
            revealed_now = (x_t != tokens) & (x_s == tokens)
            self.confidence = torch.where(revealed_now, x0_hat.confidence(), self.confidence)
        return x_s
