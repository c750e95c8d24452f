"""Progressive distillation (Salimans & Ho 2022) written once over x0_hat, for every invertible process.

A student takes one inverse step t -> s where its teacher takes two, t -> m -> s (the teacher's grid has 2N steps,
the student's the N even ones):

    x_m  = F_m(D_T(x_t), F_t^{-1}(D_T(x_t), x_t))                   the teacher's deterministic (inverse) step
    x_s* = F_s(D_T(x_m), F_m^{-1}(D_T(x_m), x_m))                   and its second
    loss = || F_s(D_S(x_t), F_t^{-1}(D_S(x_t), x_t)) - x_s* ||^2     the student's one step, differentiable

with D the x0_hat of a net's output. No process needs more than its forward, inverse and x0_hat: the same loss serves
Gaussian schedules and cold processes. On an affine Gaussian process the student's step is affine in its x0,
x_s = c x0 + (b_s / b_t) x_t with c = a_s - a_t b_s / b_t, so the loss is c^2 ||x0_S - x0*||^2 around the x0* that
`Affine.x0_reaching` gives: Salimans & Ho's x0 regression, weighted by c^2 (at the last step, s = 0, c = 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from udm.processes.capabilities import require
from udm.samplers.grids import time_tensor
from udm.samplers.steps import Inverse


def inverse_step(process, model, x_t: Tensor, t: Tensor, s: Tensor, cond=None) -> Tensor:
    """x_s = F_s(x0_hat, F_t^{-1}(x0_hat, x_t)) with x0_hat from `model` at (x_t, t): DDIM's step, for any process."""
    return Inverse()(process, x_t, process.x0_hat(process.predict(model, x_t, t, cond), x_t, t), t, s)


@torch.no_grad()
def teacher_target(process, teacher, x_t: Tensor, t: Tensor, m: Tensor, s: Tensor, cond=None) -> Tensor:
    """x_s* of two teacher steps t -> m -> s."""
    return inverse_step(process, teacher, inverse_step(process, teacher, x_t, t, m, cond), m, s, cond)


def progressive_loss(process, student, teacher, x0: Tensor, teacher_times: list[int], generator: torch.Generator | None = None,
                     cond=None) -> Tensor:
    """The distillation loss on a batch of data: each sample draws one student step (teacher_times[2i] -> [2i + 2],
    the data after the last) and x_t = F_t(x0, eps) at its start. `teacher_times` is the teacher's grid of 2N steps."""
    require(process, "invertible", "progressive distillation (the inverse step)", "distil an invertible process")
    if len(teacher_times) < 2 or len(teacher_times) % 2:
        raise ValueError(f"the teacher's grid must have an even number >= 2 of steps, got {len(teacher_times)}")
    grid = time_tensor(list(teacher_times) + [0], device=x0.device)
    i = 2 * torch.randint(0, len(teacher_times) // 2, (x0.shape[0],), generator=generator, device=x0.device)
    t, m, s = grid[i], grid[i + 1], grid[i + 2]
    x_t = process(x0, t, process.sample_noise(x0, generator))
    target = teacher_target(process, teacher, x_t, t, m, s, cond)
    return (inverse_step(process, student, x_t, t, s, cond) - target).pow(2).mean()
