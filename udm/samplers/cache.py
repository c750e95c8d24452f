"""The x0_hat cache of masked diffusion (as MDLM's sampler keeps one): a net whose output does not depend on t
(net.uses_time is False: the [MASK] count tells it the time) gives the same output for the same x_t, so a step
whose x_t did not change reuses the last output instead of calling the net. x0_hat is still drawn afresh from
those logits. Steps that change x_t on a skipped grid time never reach here (the loop skips them, see
StepRule.idle); the cache catches the rest: remasking steps that remask and reveal nothing, token steps whose
restored tokens equal what x_t held.
"""

from __future__ import annotations

import torch
from torch import Tensor

from udm.errors import UdmError
from udm.processes.base import predict


def ignores_time(net) -> bool:
    """Whether a net declares that its output does not depend on t (`uses_time = False`); a net that declares
    nothing is taken to use it, so its output is never cached."""
    return getattr(net, "uses_time", True) is False


class OutputCache:
    """model(x_t, t[, cond]) that calls `model` only when x_t or cond differ from the last call's; `calls` and
    `hits` count both kinds of call."""

    def __init__(self, model, net):
        if not ignores_time(net):
            raise UdmError(f"the output cache needs a net that ignores t; {type(net).__name__} is time-conditioned, "
                           "so equal x_t at another t may give another output")
        self.model, self.calls, self.hits = model, 0, 0
        self.last: tuple[Tensor, object, Tensor] | None = None

    def __call__(self, x_t: Tensor, t: Tensor, cond=None):
        if self.last is not None and same(self.last[0], x_t) and same(self.last[1], cond):
            self.hits += 1
            return self.last[2]
        self.calls += 1
        out = predict(self.model, x_t, t, cond)
        self.last = (x_t.clone(), cond.clone() if isinstance(cond, Tensor) else cond, out)
        return out


def same(a, b) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    return a is None and b is None
