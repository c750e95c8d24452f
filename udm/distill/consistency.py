"""Consistency distillation (Song et al. 2023) written once over x0_hat, for every invertible process.

The consistency function is the student's x0_hat, f(x_t, t) = D_S(x_t, t). On the teacher's grid t_N > ... > t_1 > t_0 = 0
each training sample draws one pair (t_{n+1}, t_n), corrupts x_{t_{n+1}} = F(x0, eps) (or, with states="teacher",
takes the state the teacher's sampler reaches there from the prior), takes one teacher inverse step to x^_{t_n}, and
asks the student for the same x0 from both points:

    loss = || f_theta(x_{t_{n+1}}, t_{n+1}) - f_theta-(x^_{t_n}, t_n) ||^2,     f(x^_0, 0) = x^_0 (the data end)

with theta- the exponential moving average of theta (decay `target_decay`, the paper's mu), held fixed in the loss
(the squared error by default; norm="l1" takes the absolute one).
A consistency model samples by the baseline step (udm's naive sampler): x0 = f(x_T, T), then for each next time
x_s = F_s(x0, fresh noise) and x0 = f(x_s, s); one step is one network evaluation and more steps refine.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from udm.distill.progressive import (by_end, check_distillable, check_norm, check_round_length, check_starts_at_T,
                                    check_states, error, inverse_step, refuse_unknown, rows_of, start_states,
                                    teacher_sampler)
from udm.errors import UdmError
from udm.samplers.grids import time_tensor


def consistency_loss(process, student, target, teacher, x0: Tensor, teacher_times: list, generator=None, cond=None,
                     states: str = "forward", norm: str = "l2") -> Tensor:
    """The loss on a batch of data over the teacher's grid `teacher_times` (t_N > ... > t_1, the data t_0 = 0 after);
    `states`: where x_t comes from (udm.distill.progressive.start_states); `norm`: the error, l2 (squared) or l1."""
    check_distillable(process, "consistency distillation")
    check_norm(norm)
    grid = time_tensor(list(teacher_times) + [0], device=x0.device)
    i = torch.randint(0, len(teacher_times), (x0.shape[0],), generator=generator, device=x0.device)
    t, s = grid[i], grid[i + 1]
    x_t = start_states(process, teacher, x0, grid, i, states, generator, cond)

    def losses(rows: Tensor) -> Tensor:
        x, tt, ss, c = x_t[rows], t[rows], s[rows], rows_of(cond, rows)
        with torch.no_grad():
            x_s = inverse_step(process, teacher, x, tt, ss, c)
            # at s = 0 the teacher's step has reached the data end; elsewhere the target is the EMA student's x0 there
            reference = x_s if bool((ss == 0).all()) else process.x0_hat(process.predict(target, x_s, ss, c), x_s, ss)
        return error(process.x0_hat(process.predict(student, x, tt, c), x, tt), reference, norm)

    return by_end(s, losses)


class Consistency:
    """Consistency distillation over the teacher `sampler`'s grid at `teacher_steps` (the paper's N); the student
    samples with the naive sampler at `student_steps` by default (any number of steps is valid)."""

    method = "consistency"
    rounds = 1
    factor = None  # one round: no division of the teacher's steps
    needs_target = True  # the EMA of the student, theta-
    recorded = ("target_decay",)  # held on resume, with the teacher's sampler (udm.distill.progressive.held)

    def __init__(self, sampler: Mapping, teacher_steps: int = 16, student_steps: int = 2, target_decay: float = 0.95,
                 steps_per_round: int = 2400, states: str = "forward",
                 norm: str = "l2", **unknown):
        refuse_unknown(unknown, "consistency distillation")
        if type(teacher_steps) is not int or teacher_steps < 1 or type(student_steps) is not int or student_steps < 1:
            raise UdmError(f"teacher_steps and student_steps are whole numbers >= 1, got {teacher_steps}, {student_steps}")
        if not 0 <= target_decay < 1:
            raise UdmError(f"target_decay (the EMA target's mu) lies in [0, 1), got {target_decay}")
        self.sampler_config, self.sampler = teacher_sampler(sampler, teacher_steps, "consistency distillation")
        self.teacher_steps, self.student_steps = teacher_steps, student_steps
        self.target_decay = target_decay
        check_states(states)
        check_norm(norm)
        self.states, self.norm = states, norm
        self.steps_per_round = check_round_length(steps_per_round)  # one round: the whole distillation

    def check(self, process) -> None:
        check_distillable(process, "consistency distillation")
        self.sampler.check(process)
        check_starts_at_T(process, self.states, self.sampler.timesteps(process)[0])

    def steps(self, round: int) -> int:
        return self.student_steps

    def student_sampler(self, round: int) -> dict:
        """A consistency model samples by the baseline step (the naive sampler), at any number of steps."""
        return {"_target_": "udm.samplers.Naive", "steps": self.student_steps}

    def loss(self, process, student, teacher, x0: Tensor, round: int = 0, generator=None, cond=None, target=None) -> Tensor:
        times = self.sampler.timesteps(process)
        return consistency_loss(process, student, target, teacher, x0, times, generator, cond, self.states, self.norm)

    @torch.no_grad()
    def update_target(self, target, student) -> None:
        """theta- <- mu theta- + (1 - mu) theta."""
        for p_target, p in zip(target.parameters(), student.parameters()):
            p_target.lerp_(p, 1 - self.target_decay)
