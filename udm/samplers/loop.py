"""The one reverse loop of the unified model (DESIGN.md section 1) and the sampler that runs it.

For each pair t > s of the time grid (ending at s = 0):

    x0_hat = p(x0 | x_t)              process.x0_hat of the net's output (optionally reshaped by a solver's transform)
    x_s   ~ p(x_s | x_t, x0_hat)      the step rule (baseline / inverse / mixed, or Analytic-DPM's)
    x_s   <- corrector(x_s)           optional Langevin steps where the process has a score

DDPM (both variances), DDIM at any eta, step skipping, DPM-Solver++(2M), predictor-corrector,
Analytic-DPM and the improved cold and token samplers are all this loop with different parts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
from rich.progress import track
from torch import Tensor

from udm.errors import UdmError
from udm.processes.capabilities import require
from udm.samplers.grids import Uniform
from udm.samplers.steps import StepRule


class Step(NamedTuple):
    """What a sampler's callback sees after every step: index, times, the state before and after, and x0_hat."""

    i: int
    t: int
    s: int
    x_t: Any
    x0_hat: Any
    x_s: Any


class SamplerLike(Protocol):
    """What udm's jobs and a user's code call on any sampler (Sampler and AnnealedLangevin implement it)."""

    def check(self, process) -> None: ...  # refuse, before sampling, a process it does not fit (UdmError)

    def prepare(self, process, model, source=None) -> SamplerLike: ...  # ready for this model (source: a TrainedModel)

    def guided(self, guidance) -> SamplerLike: ...  # a copy with classifier-free guidance, or a refusal

    def timesteps(self, process, t_start: int | None = None) -> list[int]: ...  # the noisy times it visits

    def __call__(self, process, model, x_T: Tensor, generator: torch.Generator | None = None, t_start: int | None = None,
                 cond=None, callback: Callable[[Step], None] | None = None, progress: bool = False) -> Tensor: ...


@torch.no_grad()
def reverse_loop(process, model, x: Tensor, ts: list[int], step: StepRule, transform=None, corrector=None,
                 generator: torch.Generator | None = None, cond=None, callback: Callable[[Step], None] | None = None,
                 progress: bool = False, guidance=None) -> Tensor:
    """From x = x_{ts[0]} through ts[1:] to x_0. `model(x_t, t[, cond])` gives the net's raw output;
    `step` and `transform` are already bound to this run (their `bind(process, ts)`). With `guidance` and a
    condition, x0_hat is the guided prediction on the steps inside its interval."""
    pairs = list(zip(ts, ts[1:] + [0]))
    idle = step.idle(process, ts)  # e.g. [MASK] diffusion with more steps than tokens: no network call
    first_bad = torch.full((), -1, device=x.device)  # the first step whose x_s is not finite, tracked without a sync
    for i, (t_int, s_int) in enumerate(track(pairs, description="sampling", disable=not progress, transient=True)):
        if idle[i]:
            continue
        t, s = (torch.full((x.shape[0],), v, dtype=torch.long if isinstance(v, int) else torch.float64, device=x.device)
                for v in (t_int, s_int))
        if step.churns:  # EDM's churn: noise raised to t_hat >= t before the net sees x
            x, t = step.raise_noise(process, x, t, generator)
        x0_u = None  # CFG++ only: the unconditional x0_hat whose eps_hat the step re-corrupts with
        guided = guidance is not None and guidance.guides(cond) and guidance.applies(t_int, process.T)
        if guided:
            x0_hat, x0_u = guidance.estimates(process, model, x, t, cond, generator)
        else:
            x0_hat = process.x0_hat(process.predict(model, x, t, cond), x, t, generator)
        if transform is not None:
            x0_hat = transform(x0_hat, i)
        x_in = x if x0_u is None else guidance.recorrupt(process, x, x0_hat, x0_u, t)
        if step.second_order:
            denoise = denoiser(process, model, cond, guidance if guided else None, generator)
            x_t, x = x, step(process, x_in, x0_hat, t, s, generator, denoise=denoise)
        else:
            x_t, x = x, step(process, x_in, x0_hat, t, s, generator)
        if x.is_floating_point():
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(x).all(), i, first_bad)
        if corrector is not None and s_int > 0:
            x = corrector(process, model, x, s, generator, cond)
        if callback is not None:
            callback(Step(i, t_int, s_int, x_t, x0_hat, x))
    if int(first_bad) >= 0:
        t_bad, s_bad = pairs[int(first_bad)]
        raise UdmError(f"sampling produced NaN or infinite values at step {int(first_bad) + 1} of {len(pairs)} "
                       f"(t={t_bad} -> s={s_bad}); the net or its inputs are not finite there, and nothing is returned")
    return x


def denoiser(process, model, cond, guidance, generator):
    """x0_hat at another point (x, t) of the same step, guided when the step's first evaluation was (`guidance` is
    None otherwise): what a second-order step (Heun) evaluates."""

    def denoise(x: Tensor, t: Tensor):
        if guidance is not None:
            return guidance.x0_hat(process, model, x, t, cond, generator)
        return process.x0_hat(process.predict(model, x, t, cond), x, t, generator)

    return denoise


class Sampler:
    """A time grid, a step rule, an optional x0_hat transform, corrector and guidance, run by `reverse_loop`.

    Every sampler is called the same way: sampler(process, model, x_T, generator=None, t_start=None,
    cond=None, callback=None, progress=False), where t_start < T says x_T is really x_{t_start}
    (restoring a partly degraded input) and callback(Step) watches every step. `steps` is the number
    of network steps on the grid (None: every time from t_start down).
    """

    def __init__(self, step: StepRule, steps: int | None = None, grid=None, transform=None, corrector=None, guidance=None):
        if steps is not None and int(steps) < 1:
            raise UdmError(f"steps must be a positive number of steps (or null for all), got {steps}")
        self.step, self.steps = step, None if steps is None else int(steps)
        self.grid = grid if grid is not None else Uniform()
        self.transform, self.corrector, self.guidance = transform, corrector, guidance

    def check(self, process) -> None:
        """Refuse, before sampling, a process that one of the parts or knobs does not apply to."""
        self.step.check(process)
        if getattr(self.grid, "continuous", False):
            require(process, "continuous_time", f"the {type(self.grid).__name__} grid's real-valued times", "use grid=uniform")
        if self.transform is not None:
            self.transform.check(process)
            if not self.step.uses_inverse:
                raise UdmError(f"{type(self.transform).__name__} extrapolates x0_hat for the inverse step; "
                               f"the {type(self.step).__name__} step redraws x_s from fresh noise instead")
        if self.corrector is not None:
            self.corrector.check(process)
        if self.guidance is not None:
            self.guidance.check(process, self.step)

    def guided(self, guidance) -> Sampler:
        """This sampler with classifier-free guidance (udm.samplers.Guidance) on its x0_hat."""
        guidance.check(step=self.step)
        other = copy.copy(self)
        other.guidance = guidance
        return other

    def prepare(self, process, model, source=None) -> Sampler:
        """The sampler ready for this model; a sampler that needs the model's statistics (Analytic-DPM) returns a new one."""
        self.check(process)
        return self

    def timesteps(self, process, t_start: int | None = None) -> list[int]:
        return self.grid(process, self.steps, t_start)

    def __call__(self, process, model, x_T: Tensor, generator: torch.Generator | None = None, t_start: int | None = None,
                 cond=None, callback: Callable[[Step], None] | None = None, progress: bool = False) -> Tensor:
        self.check(process)
        if self.guidance is not None and not self.guidance.guides(cond):
            raise UdmError("this sampler guides toward a condition, but none was given (cond=...); sample without guidance "
                           "for an unconditional draw, or guide it with a weaker model (Guidance(guide=...))")
        ts = self.timesteps(process, t_start)
        transform = self.transform.bind(process, ts) if self.transform is not None else None
        return reverse_loop(process, model, x_T, ts, self.step.bind(process, ts), transform, self.corrector,
                            generator, cond, callback, progress, self.guidance)
