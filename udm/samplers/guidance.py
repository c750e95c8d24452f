"""Classifier-free guidance on x0_hat, once for every process (DESIGN.md section 5, "Conditioning").

    x0_w = x0_u + w (x0_c - x0_u)                    real-valued x0 (Gaussian, VE, cold; latent: on z0_hat)
    log p_w = log p_u + w (log p_c - log p_u)         tokens, before x0_hat is drawn

x0_c is the prediction under the condition and x0_u under the null condition (or, with autoguidance,
the prediction of a weaker `guide` model). w = 1 is the conditional model, w = 0 the unconditional
one. The mix itself is the process's `guide` (ForwardProcess.guide), so a step rule sees an x0_hat like
any other and every sampler, grid and step rule stays as it is.

CFG++ (Chung et al. 2024, "CFG++: manifold-constrained classifier free guidance"), variant="cfg++":
the guided x0 but the *unconditional* eps_hat re-corrupts,

    x_s = F_s(x0_w, F_t^{-1}(x0_u, x_t))              (CFG: x_s = F_s(x0_w, F_t^{-1}(x0_w, x_t)))

The paper's x0 is built from eps_u + lambda (eps_c - eps_u), which is the same x0_w with w = lambda, so
the scale keeps its meaning (the paper uses lambda in [0, 1]; at w = 1 CFG++ is not the conditional
model: x0_c re-corrupted with eps_u).

It is written once, by re-corrupting before the unchanged step: the step gets x_t' = F_t(x0_hat, eps_u)
with eps_u = F_t^{-1}(x0_u, x_t) (x0_hat: x0_w after any x0 transform, e.g. DPM-Solver++'s), so every step
that forms eps_hat = F_t^{-1}(x0_hat, x_t') -- inverse, mixed at any eta, Analytic-DPM, a user's rule with
uses_inverse -- gets eps_u, F_t being a bijection in eps. An explicit hook (an eps_hat argument to every
step rule) would save one F_t and F_t^{-1} per step and their rounding (eps_u comes back to within float
rounding; for tokens the corrupted positions and replacements come back exactly, the order they are
restored in follows x0_hat's priority as with CFG), but it changes the signature of every rule, users'
included; the re-corruption touches none. It needs an invertible process and a step that uses the
inverse (the baseline step redraws eps: there is none to replace); both are refused when the sampler is
checked. With autoguidance x0_u is the guide's prediction. On [MASK] diffusion the noise is the set of
masked positions, which x0_u and x0_w share, so CFG++ is CFG there (x0_u's draw only advances the generator).
On the encoding (latent) process the inverse re-encodes the decoded x0_u, so with a sampling token decoder the
eps it re-corrupts with is close to, not exactly, the net's unconditional eps (guiding on the codes would be exact).
"""

from __future__ import annotations

import torch
from torch import Tensor

from udm.conditioning import null_condition
from udm.errors import UdmError
from udm.processes.capabilities import require

VARIANTS = ("cfg", "cfg++")


class Guidance:
    """scale: w >= 0. interval: (lo, hi) as fractions of T (a band of corruption levels, process-neutral): w
    applies on the steps with lo <= t / T <= hi, elsewhere the plain conditional prediction (and its eps_hat) is used.
    guide: autoguidance's weaker model (e.g. an early checkpoint of the same run, or a smaller net) instead of
    the unconditional branch of the same model; called with the condition when `guide_conditional` (a
    class-conditional guide, Karras et al. 2024), with none otherwise (an unconditional guide). With a guide,
    an unconditional model is guided too (cond=None: x0_w = x0_guide + w (x0_model - x0_guide)).
    variant: 'cfg' (the guided x0 re-corrupts with its own eps_hat) or 'cfg++' (with the unconditional one)."""

    def __init__(self, scale: float = 1.0, interval: tuple[float, float] | None = None, guide=None,
                 variant: str = "cfg", guide_conditional: bool = True):
        if not float(scale) >= 0:
            raise UdmError(f"guidance scale must be >= 0 (0: unconditional, 1: conditional, > 1: guided), got {scale}")
        if interval is not None:
            lo, hi = (float(v) for v in interval)
            if not 0 <= lo <= hi <= 1:
                raise UdmError(f"a guidance interval is (lo, hi) with 0 <= lo <= hi <= 1 (fractions of T), got {interval}")
            interval = (lo, hi)
        if variant not in VARIANTS:
            raise UdmError(f"guidance variant {variant!r} is not one of {list(VARIANTS)}")
        self.scale, self.interval, self.guide, self.variant = float(scale), interval, guide, variant
        self.guide_conditional = bool(guide_conditional)

    def check(self, process=None, step=None) -> None:
        """Refuse, before sampling, CFG++ where there is no eps_hat to replace: a process without an inverse,
        or a step rule that does not use it (the baseline step)."""
        if self.variant != "cfg++":
            return
        if process is not None:
            require(process, "invertible", "guidance_variant=cfg++ (re-corrupting with the unconditional eps_hat)",
                    "use guidance_variant=cfg")
        if step is not None and not step.uses_inverse:
            raise UdmError(f"guidance_variant=cfg++ replaces the inverse step's eps_hat by the unconditional one; "
                           f"the {type(step).__name__} step draws fresh noise instead (sampler=naive); use an inverse "
                           f"or mixed step (sampler=ddim, ddpm, improved) or guidance_variant=cfg")

    def guides(self, cond) -> bool:
        """Whether there are two predictions to mix: a condition and its null, or (autoguidance, with or without
        a condition: Karras et al. guide unconditional models too) the model's and the guide's."""
        return cond is not None or self.guide is not None

    def applies(self, t: int, T: int) -> bool:
        return self.interval is None or self.interval[0] <= t / T <= self.interval[1]

    def outputs(self, process, model, x_t: Tensor, t: Tensor, cond) -> tuple:
        """The raw outputs (out_c, out_u); both branches in one batched call when they share the net."""
        if self.guide is None:
            out = process.predict(model, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, null_condition(cond)]))
            return out.chunk(2)
        return (process.predict(model, x_t, t, cond),
                process.predict(self.guide, x_t, t, cond if self.guide_conditional else None))

    def estimates(self, process, model, x_t: Tensor, t: Tensor, cond, generator=None):
        """(x0_w, x0_u): the guided x0_hat and, for CFG++ only, the unconditional (or guide's) one; else None."""
        out_c, out_u = self.outputs(process, model, x_t, t, cond)
        x0_w = process.guide(out_c, out_u, self.scale, x_t, t, generator)
        return x0_w, process.x0_hat(out_u, x_t, t, generator) if self.variant == "cfg++" else None

    def x0_hat(self, process, model, x_t: Tensor, t: Tensor, cond, generator=None):
        """The guided x0_hat at (x_t, t)."""
        return self.estimates(process, model, x_t, t, cond, generator)[0]

    @staticmethod
    def recorrupt(process, x_t: Tensor, x0_hat, x0_u, t: Tensor):
        """CFG++'s state for the unchanged step: x_t' = F_t(x0_hat, F_t^{-1}(x0_u, x_t)), so that the step's
        eps_hat = F_t^{-1}(x0_hat, x_t') is the unconditional eps_u."""
        return process(x0_hat, t, process.inverse(x0_u, x_t, t))
