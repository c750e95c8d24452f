"""The condition argument of the x0-predictor's call, net(x_t, t, cond): what nets without conditioning do with it."""

from __future__ import annotations

from udm.errors import UdmError


def refuse_condition(net, cond) -> None:
    """An unconditional net takes cond=None only: a condition it would ignore is refused, not dropped."""
    if cond is not None:
        raise UdmError(f"{type(net).__name__} is an unconditional net and cannot use the condition it was given; "
                       f"train a conditional model (a net that takes cond) or sample without one")
