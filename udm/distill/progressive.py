"""Progressive distillation (Salimans & Ho 2022) written once over x0_hat, for every invertible process.

A student takes one inverse step t -> s where its teacher takes two, t -> m -> s (the teacher's grid has 2N steps,
the student's the N even ones; `factor` k generalises two to k, below):

    x_m  = F_m(D_T(x_t), F_t^{-1}(D_T(x_t), x_t))                   the teacher's deterministic (inverse) step
    x_s* = F_s(D_T(x_m), F_m^{-1}(D_T(x_m), x_m))                   and its second
    loss = || F_s(D_S(x_t), F_t^{-1}(D_S(x_t), x_t)) - x_s* ||^2     the student's one step, differentiable

with D the x0_hat of a net's output. No process needs more than its forward, inverse and x0_hat: the same loss serves
Gaussian schedules and cold processes. On an affine Gaussian process the student's step is affine in its x0,
x_s = c x0 + (b_s / b_t) x_t with c = a_s - a_t b_s / b_t, so the loss is c^2 ||x0_S - x0*||^2 around the x0* that
`Affine.x0_reaching` gives: Salimans & Ho's x0 regression, weighted by c^2 (at the last step, s = 0, c = 1).
`space="x0"` regresses x0_S onto x0* directly with their truncated-SNR weight max(a_t^2 / b_t^2, 1), which does not
fade the high-noise steps of a fine grid (c^2 ~ 1/N^2 there).

Rounds halve the steps: the teacher of round r samples in 2N_r steps and its student in N_r = N_0 / 2^r, and the
student of one round is the teacher of the next (udm.distill.module). `factor` k > 2 lets one student step stand for
k teacher steps t -> m_1 -> ... -> m_{k-1} -> s (the same loss, x_s* after k teacher steps): fewer rounds, so fewer
students whose errors the next round inherits, for k teacher evaluations per training sample instead of two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from udm.errors import UdmError
from udm.processes.capabilities import require
from udm.samplers.grids import time_tensor
from udm.samplers.steps import Inverse

SPACES = ("x_s", "x0")


def inverse_step(process, model, x_t: Tensor, t: Tensor, s: Tensor, cond=None) -> Tensor:
    """x_s = F_s(x0_hat, F_t^{-1}(x0_hat, x_t)) with x0_hat from `model` at (x_t, t): DDIM's step, for any process."""
    return Inverse()(process, x_t, process.x0_hat(process.predict(model, x_t, t, cond), x_t, t), t, s)


@torch.no_grad()
def teacher_target(process, teacher, x_t: Tensor, times: Sequence[Tensor], cond=None) -> Tensor:
    """x_s* of the teacher's steps through `times` = [t, m_1, ..., s] (per-sample time tensors): two steps
    t -> m -> s in a halving round, k in a round of factor k."""
    if isinstance(times, Tensor) or len(times) < 2:
        raise ValueError("times is a list of the teacher's step times, a start and an end at least")
    x = x_t
    for start, end in zip(times[:-1], times[1:]):
        x = inverse_step(process, teacher, x, start, end, cond)
    return x


STATES = ("forward", "teacher")


def check_states(states: str) -> None:
    if states not in STATES:
        raise UdmError(f"states={states!r}: a distillation draws its x_t from the forward process (forward) or from the "
                       f"teacher's sampler run from the prior (teacher)")


def check_starts_at_T(process, states: str, first: int) -> None:
    """states=teacher runs the teacher's sampler from the prior, so its grid must start at T."""
    if states == "teacher" and int(first) != process.T:
        raise UdmError(f"states=teacher runs the teacher's sampler from the prior at T={process.T}; this grid starts at "
                       f"{int(first)}")


def start_states(process, teacher, x0: Tensor, grid: Tensor, i: Tensor, states: str = "forward",
                 generator: torch.Generator | None = None, cond=None) -> Tensor:
    """x_t at t = grid[i] for each sample. states="forward": F_t(x0, eps), as a model trains. states="teacher": the
    states sampling visits, the teacher's inverse steps on `grid` from x_T ~ p(x_T) (drawn with x0 as the prior's
    reference data) down to grid[i]. They differ where the prior is not the forward process's x_T (a cold process's
    prior adds fresh noise that every later state carries) and wherever the teacher is not exact."""
    check_states(states)
    if states == "forward":
        return process(x0, grid[i], process.sample_noise(x0, generator))
    check_starts_at_T(process, states, grid[0])
    x = process.prior(x0, generator)
    with torch.no_grad():
        for j in range(int(i.max())):
            rows = (i > j).nonzero().squeeze(1)  # the samples that start after grid[j]
            t, s = grid[j].expand(len(rows)), grid[j + 1].expand(len(rows))
            x[rows] = inverse_step(process, teacher, x[rows], t, s, rows_of(cond, rows))
    return x


def check_distillable(process, method: str) -> None:
    """Distillation compares real-valued states reached by deterministic (inverse) steps."""
    require(process, "invertible", f"{method} (the inverse step)", "distil an invertible process")
    require(process, "real_valued", f"{method} (an error between real-valued states)",
            "token processes are not distilled by this objective (see experiments/distillation/README.md)")


def check_space(process, space: str) -> None:
    if space not in SPACES:
        raise UdmError(f"space={space!r}: progressive distillation's loss is taken in x_s (any process) or x0 (affine "
                       f"Gaussian processes)")
    if space == "x0" and not hasattr(process, "x0_reaching"):
        raise UdmError(f"space=x0 regresses onto the x0 that reaches the teacher's x_s, which needs an affine process; "
                       f"{process.describe()} has none: use space=x_s")


def progressive_loss(process, student, teacher, x0: Tensor, teacher_times: list[int], generator: torch.Generator | None = None,
                     cond=None, space: str = "x_s", weight: str = "none", factor: int = 2, states: str = "forward",
                     norm: str = "l2") -> Tensor:
    """The distillation loss on a batch of data: each sample draws one student step (teacher_times[k i] -> [k i + k],
    the data after the last; k = `factor`, 2 in a halving round) and x_t at its start (start_states). `teacher_times`
    is the teacher's grid of k N steps. weight="step" (space x_s) divides each sample's error by the size of the
    teacher's step, the same error between x_s* and x_t: every step of the grid then counts alike, whether the process
    moves far or little there. `states`: where x_t comes from; `norm`: the error, l2 (squared) or l1."""
    check_distillable(process, "progressive distillation")
    check_norm(norm)
    check_space(process, space)
    check_weight(space, weight)
    check_factor(factor)
    if len(teacher_times) < factor or len(teacher_times) % factor:
        raise ValueError(f"the teacher's grid must have a multiple >= {factor} of steps ({factor} per student step), "
                         f"got {len(teacher_times)}")
    grid = time_tensor(list(teacher_times) + [0], device=x0.device)
    i = factor * torch.randint(0, len(teacher_times) // factor, (x0.shape[0],), generator=generator, device=x0.device)
    times = [grid[i + j] for j in range(factor + 1)]  # t, m_1, ..., s of each sample
    t, s = times[0], times[-1]
    x_t = start_states(process, teacher, x0, grid, i, states, generator, cond)

    def losses(rows: Tensor) -> Tensor:
        x, tt, ss, c = x_t[rows], t[rows], s[rows], rows_of(cond, rows)
        target = teacher_target(process, teacher, x, [time[rows] for time in times], c)
        if space == "x_s":
            distance = error(inverse_step(process, student, x, tt, ss, c), target, norm)
            if weight != "step":
                return distance
            if target.shape != x.shape:
                raise UdmError(f"weight=step divides by the teacher's step x_s* - x_t, which needs x_s and x_t of one "
                               f"shape; {process.describe()}'s last step goes from a code to data: use weight=none")
            return distance / error(target, x, norm).clamp(min=1e-8)
        x0_student = process.x0_hat(process.predict(student, x, tt, c), x, tt)
        a, b = process.coefficients(tt)
        snr_weight = (a.pow(2) / b.pow(2)).clamp(min=1.0).to(x0.dtype)  # truncated SNR: max(SNR_t, 1)
        return snr_weight * error(x0_student, process.x0_reaching(x, tt, target, ss), norm)

    return by_end(s, losses)


WEIGHTS = ("none", "step")


def check_weight(space: str, weight: str) -> None:
    if weight not in WEIGHTS:
        raise UdmError(f"weight={weight!r}: progressive distillation weighs the loss by none or step (each sample's "
                       f"error relative to the teacher's step)")
    if weight == "step" and space != "x_s":
        raise UdmError("weight=step weighs the loss between states (space=x_s); space=x0 has its truncated-SNR weight")


def rows_of(cond, rows: Tensor):
    return None if cond is None else cond[rows]


def squared_error(a: Tensor, b: Tensor) -> Tensor:
    """Per sample: the mean of (a - b)^2 over its elements."""
    return (a - b).pow(2).flatten(1).mean(1)


NORMS = ("l2", "l1")


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise UdmError(f"norm={norm!r}: a distillation's error is l2 (squared) or l1 (absolute)")


def error(a: Tensor, b: Tensor, norm: str = "l2") -> Tensor:
    """Per sample: the mean of (a - b)^2 (l2) or |a - b| (l1) over its elements."""
    check_norm(norm)
    return squared_error(a, b) if norm == "l2" else (a - b).abs().flatten(1).mean(1)


def by_end(s: Tensor, losses) -> Tensor:
    """The mean over samples of losses(rows), taken apart for the steps that end in the data (s = 0) and the others:
    a latent process's x_0 is data, its x_s (s > 0) a code of another shape."""
    at_data = s == 0
    groups = [rows for rows in (at_data.nonzero().squeeze(1), (~at_data).nonzero().squeeze(1)) if len(rows)]
    return torch.cat([losses(rows) for rows in groups]).mean()


def takes_one_inverse_step(sampler) -> bool:
    """Whether `sampler` takes the plain inverse step, one network evaluation per step (Euler, DDIM at eta = 0,
    Improved): what a progressive student learns and what every distillation's teacher takes."""
    step = getattr(sampler, "step", None)
    return (getattr(step, "uses_inverse", False) and not step.second_order and getattr(sampler, "transform", None) is None
            and not getattr(step, "eta", 0))


def teacher_sampler(config: Mapping, steps: int, method: str):
    """(the plain config, the sampler at `steps`) of the teacher's sampler config: one network evaluation per step,
    the inverse step (Euler, DDIM at eta = 0, Improved)."""
    config = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    config.pop("steps", None)
    sampler = instantiate({**config, "steps": steps})
    if not takes_one_inverse_step(sampler):
        raise UdmError(f"{method} takes the teacher's inverse step, one network evaluation per step; "
                       f"{config.get('_target_')} is not that sampler (use udm.samplers.Euler, DDIM at eta=0 or Improved)")
    return config, sampler


def refuse_unknown(unknown: dict, method: str) -> None:
    if unknown:
        raise UdmError(f"{', '.join('distill.' + k for k in sorted(unknown))} does not apply to {method}; drop it")


def check_round_length(steps: int) -> int:
    if type(steps) is not int or steps < 1:
        raise UdmError(f"steps_per_round is a whole number of training steps >= 1, got {steps!r}")
    return steps


def entry(objective, round: int) -> dict:
    """What a student checkpoint records of its distillation (the recipe's `distilled`)."""
    return {"method": objective.method, "steps": objective.steps(round), "teacher_steps": objective.teacher_steps,
            "steps_per_round": objective.steps_per_round, "factor": objective.factor, "states": objective.states,
            "norm": objective.norm, "sampler": objective.student_sampler(round), **held(objective)}


def held(objective) -> dict:
    """The settings a resume must keep that checkpoints record since the power grid came (older ones lack them): the
    objective's own (`recorded`: progressive's space and weight, consistency's target_decay) and the teacher's sampler
    config, whose grid the rounds run on."""
    return {**{k: getattr(objective, k) for k in objective.recorded}, "teacher_sampler": dict(objective.sampler_config)}


class Progressive:
    """The rounds of progressive distillation: the first teacher samples with `sampler` at `teacher_steps`, every
    round divides the steps by `factor` (2: halves them, Salimans & Ho), the last student takes `student_steps`.
    `sampler` is a udm sampler built on the inverse step (Euler, DDIM at eta = 0, Improved) whose grid at N steps is
    its grid at k N steps taken every k-th time (the uniform grid is). Each round trains `steps_per_round` steps."""

    method = "progressive"
    needs_target = False  # no EMA target: each round's teacher is the last round's student
    recorded = ("space", "weight")  # held on resume, with the teacher's sampler (udm.distill.progressive.held)

    def __init__(self, sampler: Mapping, teacher_steps: int = 16, student_steps: int = 2, space: str = "x_s",
                 steps_per_round: int = 800, weight: str = "none", factor: int = 2, states: str = "forward",
                 norm: str = "l2", **unknown):
        refuse_unknown(unknown, "progressive distillation")
        check_factor(factor)
        rounds = rounds_between(teacher_steps, student_steps, factor)
        if rounds is None:
            raise UdmError(f"progressive distillation divides the steps by factor={factor} every round: teacher_steps / "
                           f"student_steps must be {factor}, {factor ** 2}, ...; got teacher_steps={teacher_steps}, "
                           f"student_steps={student_steps}")
        self.sampler_config, self.sampler = teacher_sampler(sampler, teacher_steps, "progressive distillation")
        check_states(states)
        check_norm(norm)
        self.space, self.weight, self.factor, self.states, self.norm = space, weight, factor, states, norm
        self.steps_per_round = check_round_length(steps_per_round)
        self.teacher_steps, self.student_steps = teacher_steps, student_steps
        self.rounds = rounds

    def check(self, process) -> None:
        """Refuse, before training, a process or grid the rounds cannot use."""
        check_distillable(process, "progressive distillation")
        check_space(process, self.space)
        check_weight(self.space, self.weight)
        self.sampler.check(process)
        for r in range(self.rounds):
            teacher, student = self.times(process, r)
            check_starts_at_T(process, self.states, teacher[0])
            if teacher[::self.factor] != student:
                raise UdmError(f"the {type(self.sampler.grid).__name__} grid at {len(student)} steps is not its grid at "
                               f"{len(teacher)} steps taken every {ordinal(self.factor)} time, so one student step "
                               f"cannot stand for {self.factor} of the teacher's; use grid=uniform (or, on the power "
                               f"grid, fewer teacher_steps or a power nearer 1, so that no rounded times collide)")

    def steps(self, round: int) -> int:
        """The student's steps in round `round` (0-based)."""
        return self.teacher_steps // self.factor ** (round + 1)

    def student_sampler(self, round: int) -> dict:
        """The config of the sampler the student of round `round` samples with: the teacher's at its steps."""
        return {**self.sampler_config, "steps": self.steps(round)}

    def times(self, process, round: int) -> tuple[list, list]:
        """(the teacher's grid, the student's grid) of round `round`."""
        grid = self.sampler.grid
        return grid(process, self.factor * self.steps(round)), grid(process, self.steps(round))

    def loss(self, process, student, teacher, x0: Tensor, round: int, generator=None, cond=None, target=None) -> Tensor:
        return progressive_loss(process, student, teacher, x0, self.times(process, round)[0], generator, cond, self.space,
                                self.weight, self.factor, self.states, self.norm)


def check_factor(factor) -> None:
    if type(factor) is not int or factor < 2:
        raise UdmError(f"factor is the number of teacher steps one student step stands for, a whole number >= 2 "
                       f"(2 halves the steps every round); got {factor!r}")


def rounds_between(teacher_steps, student_steps, factor: int) -> int | None:
    """r with teacher_steps = student_steps * factor^r, r >= 1; None where there is none."""
    if type(teacher_steps) is not int or type(student_steps) is not int or student_steps < 1:
        return None
    rounds, steps = 0, teacher_steps
    while steps > student_steps and steps % factor == 0:
        steps, rounds = steps // factor, rounds + 1
    return rounds if steps == student_steps and rounds >= 1 else None


def ordinal(k: int) -> str:
    return "other" if k == 2 else f"{k}-th"
