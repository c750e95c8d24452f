"""Classifier-free guidance on x0_hat, once for every process (DESIGN.md section 5, "Conditioning").

    x0_w = x0_u + w (x0_c - x0_u)                    real-valued x0 (Gaussian, VE, cold; latent: on z0_hat)
    log p_w = log p_u + w (log p_c - log p_u)         tokens, before x0_hat is drawn

x0_c is the prediction under the condition and x0_u under the null condition (or, with autoguidance,
the conditional prediction of a weaker `guide` model). w = 1 is the conditional model, w = 0 the
unconditional one. The mix itself is the process's `guide` (ForwardProcess.guide), so a step rule
sees an x0_hat like any other and every sampler, grid and step rule stays as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from udm.conditioning import null_condition
from udm.errors import UdmError
from udm.processes.base import predict


class Guidance:
    """scale: w >= 0. interval: (lo, hi) as fractions of T (a band of corruption levels, process-neutral): w
    applies on the steps with lo <= t / T <= hi, elsewhere the plain conditional prediction is used.
    guide: autoguidance's weaker model (another checkpoint's net, called with the condition) instead of the
    unconditional branch of the same model."""

    def __init__(self, scale: float = 1.0, interval: tuple[float, float] | None = None, guide=None):
        if not float(scale) >= 0:
            raise UdmError(f"guidance scale must be >= 0 (0: unconditional, 1: conditional, > 1: guided), got {scale}")
        if interval is not None:
            lo, hi = (float(v) for v in interval)
            if not 0 <= lo <= hi <= 1:
                raise UdmError(f"a guidance interval is (lo, hi) with 0 <= lo <= hi <= 1 (fractions of T), got {interval}")
            interval = (lo, hi)
        self.scale, self.interval, self.guide = float(scale), interval, guide

    def applies(self, t: int, T: int) -> bool:
        return self.interval is None or self.interval[0] <= t / T <= self.interval[1]

    def x0_hat(self, process, model, x_t: Tensor, t: Tensor, cond, generator=None):
        """The guided x0_hat at (x_t, t); both branches in one batched call when they share the net."""
        if self.guide is None:
            out = predict(model, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, null_condition(cond)]))
            out_c, out_u = out.chunk(2)
        else:
            out_c, out_u = predict(model, x_t, t, cond), predict(self.guide, x_t, t, cond)
        return process.guide(out_c, out_u, self.scale, x_t, t, generator)
