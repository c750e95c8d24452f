"""What a forward process supports, declared in one place and checked when a sampler or metric is built.

Every process carries a `Capabilities`; samplers, step rules and metrics call `require` with the
capability they use, so a knob a process cannot honour is refused with one message that names
the process, the knob and what to use instead, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from udm.errors import UdmError


@dataclass(frozen=True)
class Capabilities:
    """invertible       F_t^{-1}(x0, x_t) exists: the inverse and mixed steps, DPM-Solver, distillation
    gaussian_noise   q(eps) = N(0, I): the mixed step with fresh noise (eta > 0)
    variances        the sigma_t choices its mixed step knows ('posterior', 'beta'; for tokens the remasking schedules)
    remasking        the mixed step with eta > 0 corrupts revealed tokens again (ReMDM) instead of adding Gaussian noise
    score            grad log p_t(x_t) from the net's output: Langevin and predictor-corrector sampling
    analytic_variance  Analytic-DPM's optimal variance (a VP Gaussian: alphabar_t and eps_hat)
    likelihood       the variational bound it reports: 'bits/dim' (VP Gaussian on pixels), 'token nelbo' ([MASK]
                     tokens), 'uniform nelbo' (uniform-state tokens), or None; the metrics pick the bound by it
    extrapolates_x0  x0_hat may be extrapolated linearly between steps (DPM-Solver++); see `why_not_extrapolate`
    prior_needs_data x_T depends on a data batch (D_T(x0) of a held-out image), not only on its shape
    real_valued      x0 is real-valued (images, points), not token ids
    trainable_parts  the process holds weights trained with (or before) the net (the encoding model's E and D)
    continuous_time  t may be any real value in [0, T], not only the integer grid (Karras and log-SNR grids, Heun's
                     churn, continuous training densities, the probability-flow ODE)
    """

    invertible: bool = False
    gaussian_noise: bool = False
    variances: tuple[str, ...] = ()
    remasking: bool = False
    score: bool = False
    analytic_variance: bool = False
    likelihood: str | None = None
    extrapolates_x0: bool = False
    why_not_extrapolate: str = ""
    prior_needs_data: bool = False
    real_valued: bool = True
    trainable_parts: bool = False
    continuous_time: bool = False


WHAT = {
    "invertible": "an inverse F_t^{-1} (the inverse and mixed steps)",
    "gaussian_noise": "Gaussian noise q(eps) = N(0, I)",
    "score": "a score grad log p_t (Langevin steps)",
    "analytic_variance": "a variance-preserving Gaussian schedule (Analytic-DPM's variance)",
    "extrapolates_x0": "x0 predictions that may be extrapolated linearly",
    "real_valued": "real-valued data",
    "remasking": "remasking (revealed tokens corrupted again: a token process)",
    "continuous_time": "real-valued times between the grid's steps (an affine Gaussian process)",
}


def require(process, capability: str, who: str, instead: str = "") -> None:
    """Refuse `who` (a sampler or metric and its knob) when `process` lacks `capability`."""
    caps = process.capabilities
    if getattr(caps, capability):
        return
    reason = f" ({caps.why_not_extrapolate})" if capability == "extrapolates_x0" and caps.why_not_extrapolate else ""
    hint = f"; {instead}" if instead else ""
    raise UdmError(f"{who} needs {WHAT.get(capability, capability)}, which {process.describe()} does not have{reason}{hint}")
