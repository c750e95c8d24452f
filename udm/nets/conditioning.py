"""The condition argument of the x0-predictor's call, net(x_t, t, cond): what nets without conditioning do with it."""

from __future__ import annotations

import torch
from torch import Tensor

from udm.errors import UdmError


def refuse_condition(net, cond) -> None:
    """An unconditional net takes cond=None only: a condition it would ignore is refused, not dropped."""
    if cond is not None:
        raise UdmError(f"{type(net).__name__} is an unconditional net and cannot use the condition it was given; "
                       f"train a conditional model (a net that takes cond) or sample without one")


def class_rows(cond: Tensor | None, num_classes: int, batch: int, device) -> Tensor:
    """The embedding rows of class labels [B]: the label itself, or num_classes (the null class) for the null
    label -1 and for cond=None (an unconditional call of a conditional net)."""
    if cond is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if not torch.is_tensor(cond) or cond.dtype != torch.long or cond.shape != (batch,):
        raise UdmError(f"this net's condition is one class label per sample, a LongTensor [{batch}]; got "
                       f"{getattr(cond, 'dtype', type(cond).__name__)} {list(getattr(cond, 'shape', []))}")
    if bool(((cond < -1) | (cond >= num_classes)).any()):
        raise UdmError(f"class labels must lie in 0..{num_classes - 1} (or -1 for none); got {sorted(set(cond.tolist()))}")
    cond = cond.to(device)
    return torch.where(cond < 0, num_classes, cond)
