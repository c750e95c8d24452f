"""Conditions as the core API sees them: LongTensors with one row per sample, the null condition, condition dropout.

Two kinds: a class label [B] (an MNIST digit, a poet, a text file's label column) and a prompt of token ids
[B, P] (a poem's title, padded). A net that takes a condition maps the null value -1 to its learned "no
condition" embedding, so one model is both conditional and unconditional (training drops the condition with
probability p; DESIGN.md section 5).
"""

from __future__ import annotations

import torch
from torch import Tensor

from udm.errors import UdmError

NULL_LABEL = -1  # the null condition: every entry of a label [B] or a prompt [B, P]


def null_condition(cond: Tensor) -> Tensor:
    """The null condition for a batch of conditions: every entry of labels [B] or prompts [B, P] becomes NULL_LABEL."""
    if not torch.is_tensor(cond) or cond.dtype != torch.long:
        raise UdmError(f"no null condition is defined for a condition of type {type(cond).__name__}; "
                       f"conditions are LongTensors (class labels [B], prompts [B, P])")
    return torch.full_like(cond, NULL_LABEL)


def drop_condition(cond, p: float, generator: torch.Generator | None = None):
    """Each sample's condition replaced by the null one with probability p (classifier-free guidance's training);
    None (unconditional data) passes through and draws nothing."""
    if cond is None or p == 0:
        return cond
    if not 0 <= p <= 1:
        raise UdmError(f"condition_dropout is a probability in [0, 1], got {p}")
    dropped = torch.rand(cond.shape[0], device=cond.device, generator=generator) < p
    return torch.where(dropped.view(-1, *[1] * (cond.dim() - 1)), null_condition(cond), cond)
