"""Time grids: which noisy times t_1 > ... > t_n >= 1 a sampler visits before it ends at t = 0.

A grid is called as grid(process, steps, start) with `steps` the number of network steps
(None: every integer time from `start` down) and `start` the time x_T really sits at (T for
generation, lower when restoring a partly degraded input). Times are in grid units: integers for
every process, or real values between the grid's points (Karras, LogSNR, a real-valued Explicit
grid) for processes with `capabilities.continuous_time`; such grids set `continuous = True`.
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import torch
from torch import Tensor

from udm.errors import UdmError
from udm.processes.capabilities import require


def time_tensor(times, device=None) -> Tensor:
    """Times as a tensor: int64 when all are integers (the grid's tables), float64 otherwise."""
    whole = all(isinstance(t, int) or float(t).is_integer() for t in times)
    if whole:
        return torch.tensor([int(t) for t in times], dtype=torch.long, device=device)
    return torch.tensor([float(t) for t in times], dtype=torch.float64, device=device)


def time_value(t):
    """A grid time as the loop uses it: an int on the integer grid, else a float."""
    return int(t) if float(t).is_integer() else float(t)


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

    continuous = False


class Power:
    """`steps` integer times t_i = round(start * (i / steps)^power), i = steps .. 1: power = 1 is the uniform grid,
    power < 1 spends more steps at the start and jumps further on the last, power > 1 the reverse (a cold process
    with a geometric schedule, blur's std = std_min (std_max / std_min)^(t/T), is uniform in log std at power = 1).
    Where rounding would repeat a time (power far from 1, many steps), the later one moves down to stay distinct.
    Otherwise the grid at N steps is its grid at k N taken every k-th time, so progressive distillation's rounds
    nest on it (a teacher grid whose times were moved is refused by the rounds' check)."""

    continuous = False

    def __init__(self, power: float = 1.0):
        if isinstance(power, bool) or not (isinstance(power, (int, float)) and math.isfinite(power) and power > 0):
            raise UdmError(f"the power grid's exponent must be a number > 0, got {power!r}")
        self.power = float(power)

    def __call__(self, process, steps: int | None = None, start: int | None = None) -> list[int]:
        start = check_start(process.T, start)
        steps = check_steps(steps, start, process.T)
        if self.power == 1:  # exactly the uniform grid (start * i / steps: no rounding of i / steps first)
            return Uniform()(process, steps, start)
        ts = [round(start * (i / steps) ** self.power) for i in range(steps, 0, -1)]
        for i in range(1, steps):  # distinct and decreasing, leaving room for the steps still to come
            ts[i] = max(min(ts[i], ts[i - 1] - 1), steps - i)
        return ts


class SolverTime:
    """`steps` times evenly spaced in the process's solver time lambda(t) (log-SNR for Gaussian processes,
    as DPM-Solver recommends), rounded to distinct integers; every time when steps is None."""

    continuous = False

    def __call__(self, process, steps: int | None = None, start: int | None = None) -> list[int]:
        start = check_start(process.T, start)
        if steps is None:
            return Uniform()(process, None, start)
        steps = check_steps(steps, start, process.T)
        lam = process.solver_time(torch.arange(1, start + 1)).double()  # lam[t - 1] = lambda(t), increasing toward t = 1
        if start > 1 and not math.isfinite(float(lam[start - 1])):  # flow at u = 1 (a = 0): space from the next time down
            lam = lam.clone()
            lam[start - 1] = lam[start - 2]
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
    """The times given, e.g. [999, 600, 300, 50]: strictly decreasing, in (0, T]; real-valued times (e.g. a
    peer's sigmas converted to grid units) need a process with continuous time."""

    def __init__(self, timesteps: Sequence[float]):
        self.timesteps = [time_value(t) for t in timesteps]
        self.continuous = any(isinstance(t, float) for t in self.timesteps)
        if not self.timesteps:
            raise UdmError("timesteps is empty")
        if any(a <= b for a, b in zip(self.timesteps, self.timesteps[1:])):
            raise UdmError(f"timesteps must be strictly decreasing, got {self.timesteps}")

    def __call__(self, process, steps: int | None = None, start: int | None = None) -> list[int]:
        if steps is not None and steps != len(self.timesteps):
            raise UdmError(f"an explicit grid of {len(self.timesteps)} timesteps fixes the steps; got steps={steps} (leave it unset)")
        top = check_start(process.T, start)
        if any(t <= 0 or t > top or (t < 1 and not self.continuous) for t in self.timesteps):
            raise UdmError(f"timesteps must lie in 1..{top} (the starting step; T = {process.T}), got {self.timesteps}")
        if start is not None and self.timesteps[0] != start:
            raise UdmError(f"the input sits at t = {start}, but the explicit timesteps start at {self.timesteps[0]}; "
                           f"begin them at {start}")
        return list(self.timesteps)


SIGMA_CAP = 80.0  # EDM's sigma_max: the continuous grids' top noise level below the start


class Karras:
    """The step grid of EDM (Karras et al. 2022, eq. 5) in sigma = b/a:
    sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..n-1, then the data;
    as real-valued times. sigma_max defaults to sigma at the start, capped at EDM's 80 (VP's cosine and flow reach
    1e4 .. inf at u = 1, where steps would be wasted), sigma_min to sigma at t = 1 (the grid's first noisy time);
    the first time is always the start, where x_T sits, and from a start noisier than sigma_max the first step
    jumps to it."""

    continuous = True

    def __init__(self, rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None):
        if not rho > 0:
            raise UdmError(f"rho must be > 0, got {rho}")
        self.rho, self.sigma_min, self.sigma_max = float(rho), sigma_min, sigma_max

    def __call__(self, process, steps: int | None = None, start: int | None = None) -> list[float]:
        start, steps = real_valued(process, "the Karras grid", steps, start, default=18)
        hi = self.sigma_max if self.sigma_max is not None else min(float(process.sigma_at(time_tensor([start]))), SIGMA_CAP)
        lo = self.sigma_min if self.sigma_min is not None else float(process.sigma_at(time_tensor([1])))
        if not (math.isfinite(hi) and 0 < lo < hi):
            raise UdmError(f"the Karras grid needs 0 < sigma_min < sigma_max < inf in sigma = b/a; {process.describe()} "
                           f"gives {lo:g} .. {hi:g}")
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        sigmas = (hi ** (1 / self.rho) + ramp * (lo ** (1 / self.rho) - hi ** (1 / self.rho))) ** self.rho
        return decreasing(process, start, process.time_of_sigma(sigmas))


class LogSNR:
    """`steps` real-valued times evenly spaced in log-SNR from the start to t = 1 (DPM-Solver's recommended grid,
    without SolverTime's rounding to the integer grid); as the Karras grid, it spends no steps above sigma = 80:
    from a noisier start, the first step jumps there."""

    continuous = True

    def __call__(self, process, steps: int | None = None, start: int | None = None) -> list[float]:
        start, steps = real_valued(process, "the log-SNR grid", steps, start, default=20)
        lam = [max(float(process.solver_time(time_tensor([start]))), -math.log(SIGMA_CAP)),
               float(process.solver_time(time_tensor([1])))]
        targets = torch.linspace(lam[0], lam[1], steps, dtype=torch.float64)
        return decreasing(process, start, process.T * process.schedule.time_of(2 * targets))


def real_valued(process, what: str, steps: int | None, start: int | None, default: int) -> tuple[int, int]:
    """(start, steps) of a grid with real-valued times, checked: such grids need continuous time, and any number of
    steps >= 1 fits (None: `default`)."""
    require(process, "continuous_time", f"{what}'s real-valued times", "use grid=uniform or solver_time (integer times)")
    steps = default if steps is None else int(steps)
    if steps < 1:
        raise UdmError(f"steps must be >= 1, got {steps}")
    return check_start(process.T, start), steps


def decreasing(process, start: int, times: Tensor) -> list:
    """The grid as a list: the first time is the start, integers kept as ints, strictly decreasing and > 0."""
    out = [start] + [time_value(round(float(t), 12)) for t in times[1:]]
    if any(b >= a or b <= 0 for a, b in zip(out, out[1:])):
        raise UdmError(f"the grid's times are not strictly decreasing in (0, {start}]: {out}; use fewer steps")
    return out


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


GRIDS = ("uniform", "power", "solver_time", "karras", "logsnr")


def grid_named(name, rho: float = 7.0, power: float = 1.0):
    """A grid by its config name: uniform (trailing, integer), power (t_i = T (i/n)^power, integer), solver_time
    (log-SNR, rounded to the integer grid), karras (EDM's rho grid in sigma, real-valued), logsnr (log-SNR,
    real-valued); a grid object (e.g. Explicit([...]), Karras(rho, sigma_min, sigma_max)) is used as given.
    rho shapes the Karras grid only and power the power grid only; either given to another grid is refused."""
    if not isinstance(name, str):
        if not callable(name):
            raise UdmError(f"grid must be one of {list(GRIDS)} or a grid object such as Explicit([...]), got {name!r}")
        if rho != 7.0 or power != 1.0:
            raise UdmError(f"rho and power shape the named karras and power grids only; give them to the grid object "
                           f"(Karras(rho={rho}), Power(power={power}))")
        return name
    if name not in GRIDS:
        raise UdmError(f"grid={name!r} is not one of {list(GRIDS)}")
    if name != "karras" and rho != 7.0:
        raise UdmError(f"rho shapes the Karras grid only; grid={name!r} does not use it")
    if name != "power" and power != 1.0:
        raise UdmError(f"power shapes the power grid only; grid={name!r} does not use it (use grid=power)")
    if name == "karras":
        return Karras(rho)
    if name == "power":
        return Power(power)
    return {"uniform": Uniform, "solver_time": SolverTime, "logsnr": LogSNR}[name]()
