"""Time grids: which noisy times t_1 > ... > t_n >= 1 a sampler visits before it ends at t = 0.

A grid is called as grid(process, steps, start) with `steps` the number of network steps
(None: every integer time from `start` down) and `start` the time x_T really sits at (T for
generation, lower when restoring a partly degraded input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from udm.errors import UdmError


def check_start(T: int, start: int | None) -> int:
    start = T if start is None else int(start)
    if not 1 <= start <= T:
        raise UdmError(f"the starting step must lie in 1..T = 1..{T}, got {start}")
    return start


def check_steps(steps: int | None, start: int, T: int) -> int:
    steps = start if steps is None else int(steps)
    if not 1 <= steps <= start:
        raise UdmError(f"steps must lie in 1..{start} (the starting step; T = {T}), got {steps}")
    return steps


class Uniform:
    """`steps` times evenly spaced from `start` down ("trailing" spacing): t_i = round(start * i / steps)."""

    def __call__(self, process, steps: int | None = None, start: int | None = None) -> list[int]:
        start = check_start(process.T, start)
        steps = check_steps(steps, start, process.T)
        return [round(start * i / steps) for i in range(steps, 0, -1)]


class SolverTime:
    """`steps` times evenly spaced in the process's solver time lambda(t) (log-SNR for Gaussian processes,
    as DPM-Solver recommends), rounded to distinct integers; every time when steps is None."""

    def __call__(self, process, steps: int | None = None, start: int | None = None) -> list[int]:
        start = check_start(process.T, start)
        if steps is None:
            return Uniform()(process, None, start)
        steps = check_steps(steps, start, process.T)
        lam = process.solver_time(torch.arange(1, start + 1)).double()  # lam[t - 1] = lambda(t), increasing toward t = 1
        # The grid starts below the steep end of the schedule: where one integer step jumps further in
        # lambda than the grid's spacing (cosine's clipped last betas), evenly spaced targets would all
        # round to the top few t. The first step stays at `start`.
        low = start
        while low > 1 and float(lam[low - 2] - lam[low - 1]) > float(lam[0] - lam[low - 1]) / max(steps - 1, 1):
            low -= 1
        targets = torch.linspace(float(lam[low - 1]), float(lam[0]), steps, dtype=torch.float64)
        ts = [int((lam - v).abs().argmin()) + 1 for v in targets]  # t_1 ~ low, ..., t_n = 1
        ts[0] = start
        for i in range(1, steps):  # distinct and decreasing, leaving room for the steps still to come
            ts[i] = max(min(ts[i], ts[i - 1] - 1), steps - i)
        return ts


class Explicit:
    """The times given, e.g. [999, 600, 300, 50]: strictly decreasing, in 1..T."""

    def __init__(self, timesteps: Sequence[int]):
        self.timesteps = [int(t) for t in timesteps]
        if not self.timesteps:
            raise UdmError("timesteps is empty")
        if any(a <= b for a, b in zip(self.timesteps, self.timesteps[1:])):
            raise UdmError(f"timesteps must be strictly decreasing, got {self.timesteps}")

    def __call__(self, process, steps: int | None = None, start: int | None = None) -> list[int]:
        if steps is not None and steps != len(self.timesteps):
            raise UdmError(f"an explicit grid of {len(self.timesteps)} timesteps fixes the steps; got steps={steps} (leave it unset)")
        top = check_start(process.T, start)
        if any(t < 1 or t > top for t in self.timesteps):
            raise UdmError(f"timesteps must lie in 1..{top} (the starting step; T = {process.T}), got {self.timesteps}")
        if start is not None and self.timesteps[0] != start:
            raise UdmError(f"the input sits at t = {start}, but the explicit timesteps start at {self.timesteps[0]}; "
                           f"begin them at {start}")
        return list(self.timesteps)


class Loop:
    """ReMDM's loop grid (Wang et al. 2025, sec. 4.2): the uniform grid of `steps`, with `loop_steps` more steps that stay
    at the grid time t_on nearest `at * start` (the share of positions still corrupted there, for a count schedule).
    A step t_on -> t_on reveals nothing new, so only a remasking step (eta > 0) does anything on it: it corrupts
    revealed tokens again and reveals as many, letting the sampler revise the nearly finished text."""

    def __init__(self, at: float = 0.1, loop_steps: int = 8):
        if not 0 < float(at) < 1:
            raise UdmError(f"the loop's place `at` is a share of the starting time in (0, 1), got {at}")
        if type(loop_steps) is not int or loop_steps < 0:
            raise UdmError(f"loop_steps must be a whole number of extra steps >= 0, got {loop_steps!r}")
        self.at, self.loop_steps = float(at), loop_steps

    def __call__(self, process, steps: int | None = None, start: int | None = None) -> list[int]:
        ts = Uniform()(process, steps, start)
        on = min(range(len(ts)), key=lambda i: abs(ts[i] - self.at * ts[0]))
        return ts[: on + 1] + [ts[on]] * self.loop_steps + ts[on + 1:]
